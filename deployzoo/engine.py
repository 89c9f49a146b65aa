"""Glue between a model spec, its weights and a backend: what the commands share."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deployzoo.backends.base import Backend
from deployzoo.errors import CheckpointError, DeployzooError
from deployzoo.registry import ModelSpec

DEFAULT_WEIGHTS_NOTE = (
    "no checkpoint given: using deterministic stand-in weights (dz-init-v1, seed {seed}); "
    "outputs and accuracy are NOT those of the trained model"
)


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module
    weights: str  # the checkpoint path, or a note saying stand-in weights were used
    mapping_report: object | None = None  # deployzoo.checkpoints.MappingReport when a file was loaded

    @property
    def is_stand_in(self) -> bool:
        return self.mapping_report is None


def load_model(spec: ModelSpec, checkpoint: str | Path | None = None, seed: int = 0) -> LoadedModel:
    """Build ``spec``'s model and fill it strictly from ``checkpoint`` (or with stand-in weights).

    A fine-tuned checkpoint's class count is read from its head tensors (``spec.class_heads``): when it is not
    ``spec``'s, the model is built for it (``LoadedModel.spec`` is then that variant: names from the
    checkpoint's meta, else generic; deployzoo.fine_tuned.spec_for resolves names before loading). The
    mapping report says "N classes, inferred from <tensor> <shape>".
    """
    from deployzoo.checkpoints import load_into_model
    from deployzoo.checkpoints.finite import check_finite_weights
    from deployzoo.checkpoints.synthetic import synthetic_state_dict
    from deployzoo.fine_tuned import read_checkpoint, setup_for_loaded, with_classes

    raw = read_checkpoint(checkpoint) if checkpoint is not None else None
    if raw is not None:
        setup = setup_for_loaded(spec, raw)  # None: the spec's own class count
        if setup is not None:
            from deployzoo.test_settings import with_settings

            spec = with_settings(with_classes(spec, setup), spec.test_settings)  # the variant keeps the settings
    torch.manual_seed(seed)
    model = spec.build_model()
    if checkpoint is None:
        weights = synthetic_state_dict(model, spec.synthetic_gains, seed=seed, checkpoint_key=spec.checkpoint_key)
        model.load_state_dict(weights, strict=True)
        return LoadedModel(spec, model.eval(), DEFAULT_WEIGHTS_NOTE.format(seed=seed))
    try:
        report = load_into_model(model, raw, spec.checkpoint_rules)
    except CheckpointError as exc:
        raise _for_user(exc, spec, raw.tensors, model.state_dict()) from exc
    check_finite_weights(model, checkpoint, report)
    if spec.class_names_source != "official":
        from deployzoo.checkpoints.head_classes import infer_num_classes

        found = infer_num_classes(raw.tensors, spec.class_heads, str(checkpoint))
        names = ", ".join(spec.class_names[:6]) + (" ..." if len(spec.class_names) > 6 else "")
        report.classes = (f"{found.describe() if found else f'{len(spec.class_names)} classes'}; "
                          f"class names from {spec.class_names_source}: {names}")
    return LoadedModel(spec, model.eval(), str(checkpoint), report)


def _for_user(exc: CheckpointError, spec: ModelSpec, checkpoint_keys, model_state) -> CheckpointError:
    """The mapping error with what a user can act on: whose checkpoint this looks like, and what this model
    expects. The full key listing stays in ``details`` (--verbose)."""
    from deployzoo.checkpoint_families import describe_mismatch

    header, _, listing = str(exc).partition("\n")
    mismatch = describe_mismatch(spec, checkpoint_keys, model_state)
    lines = [header, *([mismatch] if mismatch else []), listing, f"{spec.name} expects {spec.checkpoint_format}"]
    error = CheckpointError("\n".join(line for line in lines if line))
    error.details = getattr(exc, "details", None)
    return error


def make_backend(
    name: str,
    spec: ModelSpec,
    batch_size: int,
    onnx_path: str | Path | None = None,
    model: torch.nn.Module | None = None,
    threads: int = 0,
    precision: str = "fp32",
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    calibration=None,
) -> Backend:
    """A loaded engine by command-line name. ONNX backends need ``onnx_path``; the PyTorch ones need ``model``.

    ``precision`` must be one the backend offers (deployzoo.precision); ``auto`` is resolved by the caller.
    ``cache_dir``: where compiled artifacts are kept (OpenVINO IR, AOTInductor packages).
    ``device`` applies to the PyTorch backends ("cpu", "cuda").
    ``calibration`` (backends.openvino_int8.Calibration) gives OpenVINO int8 its calibration images; None: a
    generated synthetic set (said so). The quantized IR is kept in the engine cache's ``int8/`` (one place for every
    caller, so the guard's engine and the measured one are the same file).
    """
    from deployzoo.backends import BACKENDS
    from deployzoo.precision import check_precision

    if name not in BACKENDS:
        raise DeployzooError(f"unknown backend '{name}'; available: {', '.join(BACKENDS)}")
    check_precision(name, precision)
    if name in ("onnxruntime", "openvino") and onnx_path is None:
        raise DeployzooError(f"the {name} backend needs an exported .onnx file")
    if name == "onnxruntime":
        from deployzoo.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(onnx_path, batch_size=batch_size, threads=threads)
    if name == "openvino":
        from deployzoo.backends.openvino_backend import OpenVINOBackend

        if precision == "int8":
            from deployzoo.backends.openvino_int8 import quantized_ir

            from deployzoo.cache import kind_dir

            ir = quantized_ir(spec, onnx_path, kind_dir("int8"), calibration)
            return OpenVINOBackend(ir, batch_size=batch_size, threads=threads, precision=precision)
        return OpenVINOBackend(onnx_path, batch_size=batch_size, threads=threads, precision=precision, ir_cache=cache_dir)
    if model is None:
        raise DeployzooError(f"the {name} backend needs the model (a checkpoint or stand-in weights)")
    from deployzoo.backends.pytorch_backend import MODES, PyTorchBackend

    mode = {backend: mode for mode, backend in MODES.items()}[name]
    if precision != "fp32" or device != "cpu":
        model = copy.deepcopy(model)  # the backend casts / moves its module; the caller's stays the fp32 reference
    example = spec.make_example_inputs(batch_size) if mode == "aoti" else None
    # Test-time settings (score threshold, detections kept) are constructor arguments traced into a package.
    fields = {"test_settings": dict(spec.test_settings)} if spec.test_settings else None
    return PyTorchBackend(model, spec.graph_input_dims(), spec.output_names, batch_size, threads, source=spec.name,
                          precision=precision, device=device, mode=mode, cast_inputs=(spec.input_name,),
                          example_inputs=example, cache_dir=cache_dir, package_fields=fields)


def stack_batch(images: list[np.ndarray], batch_size: int) -> tuple[np.ndarray, int]:
    """Stack preprocessed [3,H,W] images into [batch_size,3,H,W], padding a short batch with zeros.

    Returns (batch, number of real images); outputs past that number are padding and must be dropped.
    """
    if not images:
        raise ValueError("empty batch")
    if len(images) > batch_size:
        raise ValueError(f"{len(images)} images do not fit a batch of {batch_size}")
    batch = np.zeros((batch_size, *images[0].shape), dtype=np.float32)
    for i, image in enumerate(images):
        batch[i] = image
    return batch, len(images)


def split_outputs(outputs: dict[str, np.ndarray], count: int) -> list[dict[str, np.ndarray]]:
    """Batched outputs -> one dict per real image (padding rows dropped)."""
    return [{name: value[i] for name, value in outputs.items()} for i in range(count)]
