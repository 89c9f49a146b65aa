"""PyTorch backend variants: torch.compile, torch.export + AOTInductor packages (cached), CUDA when present."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from deployzoo.engine import make_backend
from deployzoo.errors import BadInputError, DeployzooError

needs_compiler = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                                    reason="Inductor needs a C++ compiler on CPU; none on PATH")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _max_rel(outputs, reference):
    return max(float(np.abs(outputs[k] - v).max()) / max(1.0, float(np.abs(v).max())) for k, v in reference.items())


def test_cuda_without_a_device_is_a_clear_error(refinedet_spec, refinedet_loaded):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeployzooError, match="sees no CUDA device"):
        make_backend("pytorch", refinedet_spec, 1, model=refinedet_loaded.model, device="cuda")


@pytest.mark.slow
@needs_compiler
def test_aoti_package_matches_eager_and_is_cached(tmp_path, refinedet_spec, refinedet_loaded):
    inputs = refinedet_spec.make_example_inputs(1)
    reference = make_backend("pytorch", refinedet_spec, 1, model=refinedet_loaded.model).infer(inputs)
    engine = make_backend("pytorch-aoti", refinedet_spec, 1, model=refinedet_loaded.model, cache_dir=tmp_path)
    assert _max_rel(engine.infer(inputs), reference) < 1e-4
    package = engine.package
    assert package.parent == tmp_path and package.name.startswith("refinedet320-vgg16-voc-b1-fp32-cpu-")
    assert engine.describe()["backend"] == "pytorch-aoti"
    built = package.stat().st_mtime_ns
    again = make_backend("pytorch-aoti", refinedet_spec, 1, model=refinedet_loaded.model, cache_dir=tmp_path)
    assert again.package == package and package.stat().st_mtime_ns == built  # read back, not rebuilt
    with pytest.raises(BadInputError, match="engine expects"):
        engine.infer(refinedet_spec.make_example_inputs(2))  # the package is built for batch 1


def test_aoti_package_name_follows_what_the_graph_depends_on(refinedet_spec, refinedet_loaded, monkeypatch):
    """The package stem changes with the test-time settings baked into the graph and with deployzoo's graph code
    (a package traced from older model code, or with another score threshold, must not be reused)."""
    from deployzoo import cache
    from deployzoo.backends.pytorch_backend import PyTorchBackend

    model = refinedet_loaded.model
    args = [torch.zeros(1, 3, 320, 320)]

    def stem(fields=None):
        engine = PyTorchBackend(model, refinedet_spec.graph_input_dims(), refinedet_spec.output_names,
                                source=refinedet_spec.name, package_fields=fields)
        return engine._package_name(model, args)

    plain = stem()
    assert plain == stem() and plain.startswith("refinedet320-vgg16-voc-b1-fp32-cpu-")
    assert stem({"test_settings": {"score_threshold": 0.3}}) not in (plain, stem({"test_settings": {"max_dets": 10}}))
    monkeypatch.setattr(cache, "source_digest", lambda: "other-model-code")
    assert stem() != plain
    # make_backend hands the spec's test-time settings over
    from deployzoo.test_settings import with_settings

    changed = with_settings(refinedet_spec, {"score_threshold": 0.3})
    assert make_backend("pytorch", changed, 1, model=model).package_fields == {
        "test_settings": {"score_threshold": 0.3}}
    assert make_backend("pytorch", refinedet_spec, 1, model=model).package_fields == {}


def test_aoti_needs_a_cache_folder(refinedet_spec, refinedet_loaded):
    with pytest.raises(DeployzooError, match="cache folder"):
        make_backend("pytorch-aoti", refinedet_spec, 1, model=refinedet_loaded.model)


@pytest.mark.slow
@needs_compiler
def test_torch_compile_matches_eager(refinedet_spec, refinedet_loaded):
    inputs = refinedet_spec.make_example_inputs(1)
    reference = make_backend("pytorch", refinedet_spec, 1, model=refinedet_loaded.model).infer(inputs)
    engine = make_backend("pytorch-compile", refinedet_spec, 1, model=refinedet_loaded.model)
    assert _max_rel(engine.infer(inputs), reference) < 1e-4
    assert engine.describe()["mode"] == "compile"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_engine_close_to_cpu_fp32(refinedet_spec, refinedet_loaded, precision):
    inputs = refinedet_spec.make_example_inputs(2)
    reference = make_backend("pytorch", refinedet_spec, 2, model=refinedet_loaded.model).infer(inputs)
    engine = make_backend("pytorch", refinedet_spec, 2, model=refinedet_loaded.model, precision=precision, device="cuda")
    assert engine.describe()["device"].startswith("CUDA")
    assert _max_rel(engine.infer(inputs), reference) < {"fp32": 1e-3, "fp16": 0.05, "bf16": 0.3}[precision]


@pytest.mark.gpu
@needs_cuda
def test_cuda_graphs_through_torch_compile(refinedet_spec, refinedet_loaded):
    from deployzoo.backends.pytorch_backend import PyTorchBackend

    inputs = refinedet_spec.make_example_inputs(1)
    reference = make_backend("pytorch", refinedet_spec, 1, model=refinedet_loaded.model).infer(inputs)
    import copy

    engine = PyTorchBackend(copy.deepcopy(refinedet_loaded.model), refinedet_spec.graph_input_dims(),
                            refinedet_spec.output_names, 1, device="cuda", mode="compile", cuda_graphs=True)
    for _ in range(3):  # CUDA graphs are recorded after warm-up runs
        outputs = engine.infer(inputs)
    assert _max_rel(outputs, reference) < 1e-3
    assert "CUDA graphs" in engine.describe()["mode"]
