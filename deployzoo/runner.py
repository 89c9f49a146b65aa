"""Stream a dataset through an engine in batches: read/preprocess in workers, infer, post-process.

Results are written to disk batch by batch (``ResultStore``), so an interrupted run resumes where it
stopped and nothing computed is lost.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from deployzoo import jsonio
from deployzoo.bench.timing import StageTimer
from deployzoo.data.loader import BadImage, ImageItem, PreparedImage, prepared_images
from deployzoo.engine import split_outputs
from deployzoo.errors import BadInputError, DeployzooError, InputShapeError
from deployzoo.nonfinite import NonFiniteOutputError, check_outputs, check_result, describe, skipped_record
from deployzoo.structures import Detections, LabelMap

Result = Detections | LabelMap

InferFn = Callable[[dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]  # (graph inputs, ids) -> outputs
CollateFn = Callable[[list[np.ndarray], list[Any], int], dict[str, np.ndarray]]  # ModelSpec.make_feeds


class ResultStore:
    """Per-image results on disk as numbered .npz shards plus a run fingerprint: detections (masks as RLE
    JSON), or label maps (one compressed uint8 array per image).

    A shard is written to a temporary name and renamed, so a kill leaves either a whole shard or
    none. ``fingerprint`` (model, weights, engine, preprocessing...) must match to resume.
    """

    def __init__(self, directory: str | Path, fingerprint: dict[str, Any], resume: bool = False):
        self.directory = Path(directory)
        self.shard_dir = self.directory / "partial"
        fingerprint_file = self.directory / "run-fingerprint.json"
        existing = sorted(self.shard_dir.glob("shard-*.npz")) if self.shard_dir.is_dir() else []
        if existing and not resume:
            raise DeployzooError(
                f"{self.directory} already holds {len(existing)} result shards of an earlier run; "
                "pass --resume to continue it, or choose another output directory"
            )
        if existing and fingerprint_file.is_file():
            previous = json.loads(fingerprint_file.read_bytes())
            if previous != json.loads(jsonio.dumps(fingerprint)):
                diff = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
                raise DeployzooError(
                    f"{self.directory}: cannot resume, the earlier run used different settings ({', '.join(diff)})"
                )
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        fingerprint_file.write_bytes(jsonio.encoded(fingerprint, indent=1))
        self._next = len(existing)

    def load(self) -> tuple[dict[str, Result], list[dict[str, str]]]:
        """Everything finished so far: results by id, and the images skipped as bad."""
        results: dict[str, Result] = {}
        skipped: list[dict[str, str]] = []
        for shard in sorted(self.shard_dir.glob("shard-*.npz")):
            with np.load(shard, allow_pickle=False) as data:
                skipped += json.loads(str(data["skipped"]))
                if "label_maps" in data:  # semantic segmentation shard
                    for k, image_id in enumerate(data["ids"].tolist()):
                        results[image_id] = LabelMap(data[f"labels_{k}"])
                    continue
                ids, counts = data["ids"].tolist(), data["counts"]
                bounds = np.concatenate([[0], np.cumsum(counts)])
                masks = json.loads(str(data["masks"])) if "masks" in data else [None] * len(ids)
                for i, image_id in enumerate(ids):
                    a, b = bounds[i], bounds[i + 1]
                    results[image_id] = Detections(data["boxes"][a:b], data["scores"][a:b], data["labels"][a:b], masks[i])
        return results, skipped

    def append(self, batch: Sequence[tuple[str, Result]], skipped: Sequence[dict[str, str]] = ()) -> None:
        if batch and isinstance(batch[0][1], LabelMap):
            arrays = {"ids": np.asarray([i for i, _ in batch], dtype=str), "label_maps": np.asarray(True),
                      "skipped": np.asarray(json.dumps(list(skipped))),
                      **{f"labels_{k}": m.labels for k, (_, m) in enumerate(batch)}}
            self._write(arrays, compressed=True)
            return
        dets = [d for _, d in batch]
        arrays = {
            "ids": np.asarray([i for i, _ in batch], dtype=str),
            "counts": np.asarray([len(d) for d in dets], dtype=np.int64),
            "boxes": np.concatenate([d.boxes for d in dets]) if dets else np.zeros((0, 4), np.float32),
            "scores": np.concatenate([d.scores for d in dets]) if dets else np.zeros((0,), np.float32),
            "labels": np.concatenate([d.labels for d in dets]) if dets else np.zeros((0,), np.int64),
            "skipped": np.asarray(json.dumps(list(skipped))),
            "masks": np.asarray(json.dumps([d.masks for d in dets])),  # RLEs (instance segmentation) or None
        }
        self._write(arrays)

    def _write(self, arrays: dict[str, np.ndarray], compressed: bool = False) -> None:
        final = self.shard_dir / f"shard-{self._next:06d}.npz"
        temporary = final.with_suffix(".tmp.npz")
        (np.savez_compressed if compressed else np.savez)(temporary, **arrays)
        os.replace(temporary, final)
        self._next += 1


@dataclass
class DatasetRun:
    results: dict[str, Result]
    skipped: list[dict[str, str]]  # {"image_id", "path", "problem"}
    timer: StageTimer
    resumed: int = 0  # images whose results came from an earlier, interrupted run
    computed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # figures for metrics.json (a Ray run's "ray")
    # The graph inputs the engine was fed, for run's pure-inference replay; never written anywhere:
    # "first_full_batch" (inputs), "batches" [(inputs, images)], "items", "batches_complete", "batch_bytes".
    fed: dict[str, Any] = field(default_factory=dict)


# ``run``'s pure-inference side replays the evaluation's own batches (bench.e2e_ratio.replay_pure): the graph
# inputs of the first batches are kept, in order, up to this many bytes (a detector's time depends on each
# image's size and content, so one batch does not stand for a set of differently sized images).
REPLAY_BYTES = 512 * 2**20


def _keep_for_replay(fed: dict[str, Any], inputs: dict[str, np.ndarray], images: int,
                     items: Sequence[ImageItem] = ()) -> None:
    """Append (inputs, images) to ``fed["batches"]`` while the kept inputs stay within REPLAY_BYTES; past it,
    ``fed["batches_complete"]`` turns False and later batches are not kept. ``fed["items"]``: the kept batches'
    images in feeding order (a second pass over them forms the same batches)."""
    kept = fed.setdefault("batches", [])
    size = sum(a.nbytes for a in inputs.values())
    if not fed.setdefault("batches_complete", True) or fed.get("batch_bytes", 0) + size > REPLAY_BYTES:
        fed["batches_complete"] = False
        return
    fed["batch_bytes"] = fed.get("batch_bytes", 0) + size
    kept.append((inputs, images))
    fed.setdefault("items", []).extend(items)  # the kept batches' images, in the order they were fed


def run_dataset(
    items: Sequence[ImageItem],
    preprocess: Callable,
    infer: InferFn,
    postprocess: Callable[[dict[str, np.ndarray], Any], Result],
    batch_size: int,
    collate: CollateFn,
    store: ResultStore | None = None,
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
    description: str = "images",
    batch_key: Callable[[Any], Any] | None = None,
    per_detection: Sequence[str] = (),
    skip_nonfinite: bool | None = None,
    overlap: bool = True,
    keep_inputs: bool = False,
) -> DatasetRun:
    """Run ``items`` through preprocess -> infer -> postprocess in batches of ``batch_size``.

    ``collate`` turns a batch of preprocessed images into graph inputs (``ModelSpec.make_feeds``); a
    last short batch is padded to ``batch_size`` and the padding's outputs dropped. ``batch_key(meta)``:
    an image whose key differs from the current batch's closes that batch first (graphs that must not
    pad batch only images of one size; order items by size to keep batches full).
    A bad image raises BadInputError naming it (after the batches before it are stored), or with
    ``skip_bad`` is recorded in ``skipped`` and left out.
    Every image's outputs and post-processed result are checked for NaN and infinity (deployzoo.nonfinite;
    ``per_detection``: the outputs whose rows past ``num_dets`` are padding, ``spec.ranked_outputs``): such an
    image raises NonFiniteOutputError naming it and the output, or with ``skip_nonfinite`` (default:
    ``skip_bad``) is skipped and listed with its counts (``"non_finite"``).
    ``overlap``: post-process each batch in a thread while the next one is inferred (default); False runs
    every stage one after the other in this thread. Results, order, shards and errors are the same.
    ``keep_inputs``: keep the graph inputs fed to the engine in ``DatasetRun.fed`` (the first full batch, and
    every batch up to REPLAY_BYTES) for ``run``'s pure-inference replay.
    """
    skip_nonfinite = skip_bad if skip_nonfinite is None else skip_nonfinite
    source = getattr(infer, "source", "engine")  # what gave the outputs, for messages (dump_infer: the dumps)
    done: dict[str, Result] = {}
    skipped: list[dict[str, str]] = []
    if store is not None:
        done, skipped = store.load()
    finished = set(done) | {s["image_id"] for s in skipped}
    todo = [item for item in items if item.image_id not in finished]
    resumed = len(items) - len(todo)
    results = dict(done)
    timer = StageTimer()
    extra: dict[str, Any] = {}
    fed: dict[str, Any] = {}
    batch: list[PreparedImage] = []
    batch_skipped: list[dict[str, str]] = []

    def finish(prepared_batch: list[PreparedImage], outputs: dict[str, np.ndarray] | None,
               batch_skipped: list[dict[str, str]]) -> None:
        """Post-process, check and store one inferred batch (in the post-processing thread when overlapping)."""
        finished_batch: list[tuple[str, Result]] = []
        non_finite: NonFiniteOutputError | None = None
        if prepared_batch:
            count = len(prepared_batch)
            with timer.stage("postprocess"):
                for prepared, per_image in zip(prepared_batch, split_outputs(outputs, count)):
                    found = check_outputs(per_image, per_detection)
                    if not found:
                        with np.errstate(over="ignore", invalid="ignore"):  # overflow is found in the result
                            result = postprocess(per_image, prepared.meta)
                        found = check_result(result)
                    if found and not skip_nonfinite:
                        non_finite = NonFiniteOutputError(prepared.image_id, prepared.path, found, source,
                                                          resumable=store is not None)
                        break  # store what is finished before it, then stop
                    if found:
                        tqdm.write(f"warning: skipped {prepared.path}: non-finite {source} output: {describe(found)}")
                        batch_skipped.append(skipped_record(prepared.image_id, prepared.path, found))
                        continue
                    finished_batch.append((prepared.image_id, result))
            results.update(finished_batch)
            timer.count(count)
        if store is not None and (finished_batch or batch_skipped):
            store.append(finished_batch, batch_skipped)
        skipped.extend(batch_skipped)
        if non_finite is not None:
            raise non_finite

    # Host post-processing (decode + NMS, mask pasting, label-map resizing) of batch k runs in one thread
    # while batch k + 1 is inferred: off the critical path. One batch at most waits, so memory stays bounded,
    # and batches are finished and stored in order (same results, shards and errors as without overlap).
    post_thread: ThreadPoolExecutor | None = None  # set below, for the length of the run
    pending: list[Future] = []

    def wait_pending() -> None:
        while pending:
            pending.pop(0).result()  # a batch's error (non-finite outputs) is raised here, in order

    def one_by_one() -> None:
        """The batch's images alone (each padded to the batch size), after the engine refused the batch's input
        shape (an engine fixed to one image size): those it takes are stored in order; the first it refuses
        stops the run naming its file, or with ``skip_bad`` each is skipped and listed."""
        wait_pending()  # what came before is stored first, in order
        for prepared in list(batch):
            try:
                with timer.stage("infer"):
                    outputs = infer(collate([prepared.array], [prepared.meta], batch_size), [prepared.image_id])
            except InputShapeError as exc:
                problem = exc.problem
                if not skip_bad:
                    batch.clear()
                    finish([], None, list(batch_skipped))
                    batch_skipped.clear()
                    raise BadInputError(prepared.path, problem) from None
                tqdm.write(f"warning: skipped {prepared.path}: {problem}")
                finish([], None, [{"image_id": prepared.image_id, "path": prepared.path, "problem": problem}])
                continue
            finish([prepared], outputs, [])
        timer.inferred()
        batch.clear()
        finish([], None, list(batch_skipped))
        batch_skipped.clear()

    def flush() -> None:
        outputs = None
        if batch:
            inputs = collate([p.array for p in batch], [p.meta for p in batch], batch_size)
            try:
                with timer.stage("infer"):
                    outputs = infer(inputs, [p.image_id for p in batch])
            except InputShapeError:
                one_by_one()
                return
            if keep_inputs:  # after the call: only inputs the engine took are replayed
                if len(batch) == batch_size and "first_full_batch" not in fed:
                    # The engine's inputs of real images: a pure-inference benchmark can time these very ones.
                    fed["first_full_batch"] = inputs
                _keep_for_replay(fed, inputs, len(batch), [ImageItem(p.image_id, p.path) for p in batch])
            timer.inferred()
        job = (list(batch), outputs, list(batch_skipped))
        batch.clear()
        batch_skipped.clear()
        wait_pending()
        if post_thread is None:
            finish(*job)
        elif job[0] or job[2]:
            pending.append(post_thread.submit(finish, *job))

    def drain() -> None:
        flush()
        wait_pending()

    bar = tqdm(total=len(items), initial=resumed, desc=description, unit="img", disable=not progress, leave=False)
    # An interrupted run still stores the batch being post-processed (the pool's exit waits for it).
    with timer.run(), (ThreadPoolExecutor(1, thread_name_prefix="postprocess") if overlap else nullcontext()) as post_thread:
        for prepared in prepared_images(todo, preprocess, workers=workers, read_ahead=2 * batch_size + 2):
            timer.started()  # worker start-up is not part of the end-to-end rate (kept as startup_s)
            if isinstance(prepared, BadImage):
                if not skip_bad:
                    drain()  # keep what is finished before stopping
                    raise BadInputError(prepared.path, prepared.problem)
                tqdm.write(f"warning: skipped {prepared.path}: {prepared.problem}")
                batch_skipped.append({"image_id": prepared.image_id, "path": prepared.path, "problem": prepared.problem})
            else:
                timer.add("read", prepared.read_s)
                timer.add("preprocess", prepared.preprocess_s)
                if batch and batch_key is not None and batch_key(prepared.meta) != batch_key(batch[0].meta):
                    flush()
                batch.append(prepared)
            if len(batch) == batch_size:
                flush()
            bar.update(1)
        drain()
    bar.close()
    return DatasetRun(results, skipped, timer, resumed=resumed, computed=timer.items, extra=extra, fed=fed)
