"""torch.export + AOTInductor: build a ``.pt2`` package once and keep it, like an engine file."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from deployzoo.errors import DeployzooError


def load_or_build(model: torch.nn.Module, args: list[torch.Tensor], cache_dir: Path, stem: str,
                  fields: dict | None = None) -> Path:
    """The package ``cache_dir/<stem>.pt2``, built from ``model`` at ``args``' shapes when it is not there yet.

    The stem must name everything the package depends on (weights, shapes, precision, device, torch version):
    a package found under it is used as it is. ``fields``: what it was built from, for ``deployzoo cache list``.
    """
    from deployzoo.cache import cached

    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None \
            and not (cache_dir / f"{stem}.pt2").is_file():
        raise DeployzooError("AOTInductor compiles C++: no C++ compiler (c++ or g++, or $CXX) found on PATH")

    def build(tmp: Path) -> None:
        # torch.export and the C++ compile take minutes on a few cores, with no output of their own: say so.
        print(f"building the AOTInductor package {stem} into the engine cache {cache_dir} (torch.export, then "
              "a C++ compile: 1-3 minutes on 2 cores)", flush=True)
        with torch.inference_mode(False), torch.no_grad():
            try:
                exported = torch.export.export(model, tuple(args))
            except Exception as exc:  # torch.export's errors name the unsupported construct
                raise DeployzooError(f"torch.export failed for {stem}: {type(exc).__name__}: {exc}") from exc
            # Inductor (torch 2.13, CPU) gives convolutions a channels-last layout whose strides come out wrong
            # when the batch is a data-dependent size (the mask head on an image's detections): every mask was
            # wrong, with no error. Graphs with such sizes are compiled without that layout change.
            with torch._inductor.config.patch(layout_optimization=not has_data_dependent_shapes(exported)):
                torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp / f"{stem}.pt2"))

    # An engine-cache entry (deployzoo.cache): built in a temporary folder and renamed, so an interrupted build
    # never leaves a package that looks whole; checked (size, digest) before reuse.
    return cached(cache_dir, stem, [".pt2"], build, {**(fields or {}), "torch": torch.__version__},
                  what="AOTInductor package")


def has_data_dependent_shapes(exported: torch.export.ExportedProgram) -> bool:
    """Whether some value in ``exported``'s graph has a size known only at run time (nonzero's length and what
    follows from it: the R-CNN models' RoIs per FPN level and their detections)."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    return any(free_unbacked_symbols(node.meta["val"]) for node in exported.graph.nodes if "val" in node.meta)
