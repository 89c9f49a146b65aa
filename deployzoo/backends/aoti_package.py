"""torch.export + AOTInductor: build a ``.pt2`` package once and keep it, like an engine file."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from deployzoo.errors import DeployzooError


def load_or_build(model: torch.nn.Module, args: list[torch.Tensor], cache_dir: Path, stem: str) -> Path:
    """The package ``cache_dir/<stem>.pt2``, built from ``model`` at ``args``' shapes when it is not there yet.

    The stem must name everything the package depends on (weights, shapes, precision, device, torch version):
    a package found under it is used as it is.
    """
    package = cache_dir / f"{stem}.pt2"
    if package.is_file():
        return package
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        raise DeployzooError("AOTInductor compiles C++: no C++ compiler (c++ or g++, or $CXX) found on PATH")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False), torch.no_grad():
        try:
            exported = torch.export.export(model, tuple(args))
        except Exception as exc:  # torch.export's errors name the unsupported construct
            raise DeployzooError(f"torch.export failed for {stem}: {type(exc).__name__}: {exc}") from exc
        partial = cache_dir / f"{stem}.partial.pt2"
        # Written under another name and renamed: an interrupted build never leaves a package that looks whole.
        torch._inductor.aoti_compile_and_package(exported, package_path=str(partial))
    partial.replace(package)
    return package
