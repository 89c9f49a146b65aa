"""One engine copy and what it does with a work shard: read, preprocess, infer, post-process (no Ray here;
deployzoo.distributed.ray_eval makes it a Ray actor)."""
from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from deployzoo.data.loader import ImageItem
from deployzoo.registry import ModelSpec


@dataclass
class EngineRecipe:
    """What a replica needs to open the same engine the driver would: plain values, cheap to send.

    ``onnx_bytes``: the exported graph itself (ONNX backends), sent through Ray's object store so that no
    shared file system is needed for it; None for the PyTorch backends, which build the model from
    ``checkpoint`` (a path every node must see; None: the deterministic stand-in weights).
    ``onnx_name``: the file name the graph had on the driver (kept so error messages read the same)."""

    spec: ModelSpec
    backend: str
    batch_size: int
    precision: str = "fp32"
    threads: int = 1
    device: str = "cpu"
    checkpoint: str | None = None
    onnx_name: str | None = None


@dataclass
class ShardOutcome:
    """A finished work shard: results in shard order, images skipped as bad input, and timings (seconds,
    measured in the replica: ``busy_s`` from the call's start to its return)."""

    index: int
    results: list[tuple[str, Any]]
    skipped: list[dict[str, str]]
    stages: dict[str, float]
    busy_s: float
    replica: str  # "host:pid"
    images: int = 0
    error: str | None = None  # a DeployzooError's message (bad image, non-finite outputs): the run stops on it
    extra: dict[str, Any] = field(default_factory=dict)


class Replica:
    """Opens the engine once (``recipe``; ``onnx_bytes`` for the ONNX backends), then runs work shards.

    Reading and preprocessing happen here, in this process, next to the engine (``workers=0``): the images
    must be at the same path on every node (shared storage), only ids and paths travel. Post-processing
    overlaps the next batch's inference in one thread as in a local run (deployzoo.runner.run_dataset)."""

    def __init__(self, recipe: EngineRecipe, onnx_bytes: bytes | None = None):
        import torch

        from deployzoo.pipeline import open_engine

        started = time.perf_counter()
        threads = max(1, recipe.threads)
        torch.set_num_threads(threads)  # post-processing (NMS, mask pasting) stays within the replica's cores
        self.recipe = recipe
        self.workdir = Path(tempfile.mkdtemp(prefix="deployzoo-replica-"))
        onnx_path = None
        if onnx_bytes is not None:
            onnx_path = self.workdir / (recipe.onnx_name or f"{recipe.spec.name}.onnx")
            onnx_path.write_bytes(onnx_bytes)
        self.engine = open_engine(recipe.spec, recipe.backend, recipe.batch_size, recipe.checkpoint, onnx_path,
                                  work_dir=self.workdir, threads=threads, precision=recipe.precision,
                                  device=recipe.device)
        self.postprocess = recipe.spec.make_postprocess()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.open_s = time.perf_counter() - started

    def ready(self) -> dict[str, Any]:
        """Who this replica is and how long opening the engine took (seconds)."""
        return {"replica": self.name, "pid": os.getpid(), "host": socket.gethostname(), "open_s": self.open_s}

    def pid(self) -> int:
        return os.getpid()

    def run_shard(self, index: int, items: Sequence[ImageItem], skip_bad: bool = False,
                  skip_nonfinite: bool | None = None) -> ShardOutcome:
        """Run one work shard as run_dataset does locally (same batching, checks and errors); raises
        BadInputError or NonFiniteOutputError like it (the driver stores the other shards, then stops)."""
        from deployzoo.errors import DeployzooError
        from deployzoo.runner import run_dataset

        started = time.perf_counter()
        spec = self.recipe.spec
        try:
            run = run_dataset(list(items), spec.preprocess, self.engine.infer, self.postprocess,
                              self.recipe.batch_size, spec.make_feeds, store=None, workers=0, skip_bad=skip_bad,
                              progress=False, batch_key=spec.batch_key, per_detection=spec.ranked_outputs,
                              skip_nonfinite=skip_nonfinite)
        except DeployzooError as exc:  # sent back as text: our errors' constructors do not all survive pickling
            return ShardOutcome(index, [], [], {}, time.perf_counter() - started, self.name, error=str(exc))
        results = [(item.image_id, run.results[item.image_id]) for item in items if item.image_id in run.results]
        return ShardOutcome(index, results, run.skipped, dict(run.timer.seconds), time.perf_counter() - started,
                            self.name, images=len(results) + len(run.skipped))
