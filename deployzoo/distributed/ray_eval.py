"""One evaluation or prediction spread over a Ray cluster: replicas (Ray actors, one engine each) run work
shards; the driver writes the same result shards as a local run, so ``--resume`` works across both.

How it follows a local run (deployzoo.runner.run_dataset):
- the images still to do (after the result shards already in ``--out``) are cut every k batches into work
  shards (deployzoo.distributed.shards), so batches hold the same images as locally;
- each replica opens the engine once: the ONNX graph the driver exported (once) travels through Ray's
  object store, so replicas need no shared file system for it; the images are read by the replicas from
  their path, which every node must see (shared storage);
- a finished shard's results come back to the driver, which stores them (ResultStore, one .npz per batch)
  before counting them; a shard whose replica dies is put back in the queue and run by another replica
  (a replacement replica is started), and a shard's results are taken once, so nothing is counted twice;
- results are returned in the run's image order whatever order shards finish in.

Timings (``DatasetRun.extra["ray"]``, metrics.json's ``ray``): per replica, images and busy seconds
(measured inside the replica around each shard) give its throughput; the run's wall clock from the first
shard sent to the last stored gives the overall images/s; the overhead share is the part of the replicas'
time in the run not spent on images (scheduling, sending shards and results, waiting for the last shards),
1 - sum(busy) / sum(replica time in the run). Cluster and replica start-up are reported apart, as the
local run reports its worker start-up apart.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from deployzoo.bench.timing import StageTimer
from deployzoo.data.loader import ImageItem
from deployzoo.distributed import require_ray
from deployzoo.distributed.replica import EngineRecipe, Replica, ShardOutcome
from deployzoo.distributed.shards import plan_shards, shard_images
from deployzoo.errors import DeployzooError
from deployzoo.runner import DatasetRun, ResultStore

IN_FLIGHT = 2  # shards queued per replica: one running, one waiting, so a replica never idles between shards


@dataclass
class EngineSource:
    """What the driver made once for every replica: the recipe, the exported graph (ONNX backends) and the
    facts a local run puts in its fingerprint (same values, so --resume works across local and Ray runs)."""

    recipe: EngineRecipe
    onnx_path: Path | None
    weights: str
    loaded: Any = None  # the driver's PyTorch model (for the weights report)

    def describe(self) -> dict[str, Any]:
        r = self.recipe
        return {"backend": r.backend, "precision": r.precision, "batch_size": r.batch_size,
                "threads": r.threads, "weights": self.weights, "runs_in": "ray replicas"}

    def infer(self, feeds, ids=()):  # the replicas infer; nothing on the driver should
        raise RuntimeError("a Ray run's engine lives in its replicas; the driver does not infer")


def source_from_engine(engine, backend: str, checkpoint: str | Path | None = None, precision: str = "fp32",
                       device: str = "cpu") -> EngineSource:
    """The recipe for replicas of ``engine`` (a ``pipeline.Engine`` the driver opened once, as a local run
    does: its ONNX export, weights and fingerprint are the local run's, so --resume works across both, and
    a graph or checkpoint that cannot be opened fails here, before any replica starts).

    ONNX backends: the replicas get the engine's graph through Ray's object store. PyTorch backends: the
    replicas build the model from ``checkpoint`` (a path every node must see; None: stand-in weights).
    Raises DeployzooError for int8 (its calibration runs on the driver; not supported on Ray yet)."""
    from deployzoo.backends import ONNX_BACKENDS

    if precision == "int8":
        raise DeployzooError("--precision int8 is not supported with --ray yet (its calibration runs on one "
                             "machine); run it without --ray, or choose fp32/fp16/bf16")
    onnx = Path(engine.onnx_path) if engine.onnx_path is not None and backend in ONNX_BACKENDS else None
    checkpoint_path = str(Path(checkpoint).resolve()) if checkpoint is not None else None
    recipe = EngineRecipe(engine.spec, backend, engine.backend.batch_size, precision=precision, device=device,
                          checkpoint=checkpoint_path, onnx_name=onnx.name if onnx else None)
    return EngineSource(recipe, onnx, engine.weights, engine.loaded)


def connect(address: str | None, cpus: int | None = None):
    """Join the cluster at ``address`` (``ray start --head`` printed it; "auto": the one this node is in), or
    with "local"/None start one on this machine limited to ``cpus`` (default: this machine's CPUs).
    Reuses a connection this process already has. Returns (ray, whether we started it and must stop it)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address in (None, "local"):
        ray.init(num_cpus=cpus or os.cpu_count() or 1, **quiet)
    else:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise DeployzooError(f"cannot join the Ray cluster at {address}: {exc} (start one with "
                                 f"`ray start --head` and pass the address it prints, or use --ray local)") from None
    return ray, True


@dataclass
class _ReplicaState:
    number: int
    handle: Any
    created: float
    name: str = ""
    pid: int | None = None  # the replica's process id on its node
    alive: bool = True
    died: float | None = None
    in_flight: int = 0
    images: int = 0
    busy_s: float = 0.0
    shards: int = 0
    last_done: float | None = None  # when its last shard's results were stored (driver clock)


@dataclass
class RayRunner:
    """Runs a dataset over Ray replicas; called like ``runner.run_dataset`` (``evaluate_dataset(runner=...)``,
    ``predict_files(runner=...)``) and returns the same DatasetRun (results in ``items`` order).

    ``replicas``: engine copies (default: the cluster's CPUs // ``threads_per_replica``; more than fit is
    refused, as Ray would wait for CPUs forever). ``shard_size``: images per work shard (default: see
    ``shards.shard_images``). ``max_replacements``: replicas started to replace lost ones (default:
    ``replicas``). ``on_shard(done, runner)``: called after each stored shard (monitoring, tests).
    ``cpus``: the local cluster's CPUs (``address`` "local").
    """

    source: EngineSource
    address: str | None = "local"
    replicas: int | None = None
    threads_per_replica: int = 1
    shard_size: int | None = None
    max_replacements: int | None = None
    on_shard: Callable[[int, "RayRunner"], None] | None = None
    cpus: int | None = None
    report: dict[str, Any] = field(default_factory=dict)
    pool: list[_ReplicaState] = field(default_factory=list)

    def __call__(self, items: Sequence[ImageItem], preprocess=None, infer=None, postprocess=None,
                 batch_size: int | None = None, collate=None, store: ResultStore | None = None, workers: int = 1,
                 skip_bad: bool = False, progress: bool = True, description: str = "images", batch_key=None,
                 per_detection=(), skip_nonfinite: bool | None = None, overlap: bool = True) -> DatasetRun:
        # preprocess/infer/postprocess/collate/batch_key are the spec's: the replicas take them from the same
        # spec (EngineRecipe), so they are not sent. workers: the replicas read in their own process.
        batch_size = self.source.recipe.batch_size
        done, skipped = store.load() if store is not None else ({}, [])
        finished = set(done) | {s["image_id"] for s in skipped}
        todo = [item for item in items if item.image_id not in finished]
        if not todo:  # everything came from the result shards already there: no cluster needed
            results = {item.image_id: done[item.image_id] for item in items if item.image_id in done}
            return DatasetRun(results, skipped, StageTimer(), resumed=len(items), computed=0)
        t0 = time.perf_counter()
        ray, started_here = connect(self.address, self.cpus)
        try:
            cluster_s = time.perf_counter() - t0
            new, new_skipped, timer = self._run(ray, todo, len(items) - len(todo), len(items), batch_size, store,
                                                skip_bad, skip_nonfinite, progress, description, cluster_s)
        finally:
            self._stop(ray)
            if started_here:
                ray.shutdown()
        every = {**done, **new}
        results = {item.image_id: every[item.image_id] for item in items if item.image_id in every}
        return DatasetRun(results, skipped + new_skipped, timer, resumed=len(items) - len(todo), computed=len(new),
                          extra={"ray": self.report})

    def _start_replica(self, ray, actor_class, onnx_ref) -> _ReplicaState:
        state = _ReplicaState(len(self.pool), actor_class.remote(self.source.recipe, onnx_ref), time.perf_counter())
        self.pool.append(state)
        return state

    def _stop(self, ray) -> None:
        for state in self.pool:
            if state.alive:
                ray.kill(state.handle)
                state.alive = False

    def _run(self, ray, todo, resumed, total, batch_size, store, skip_bad, skip_nonfinite, progress, description,
             cluster_s):
        from ray.exceptions import RayActorError, RayError
        from tqdm import tqdm

        cpus = int(ray.cluster_resources().get("CPU", 0))
        threads = max(1, self.threads_per_replica)
        replicas = self.replicas or max(1, cpus // threads)
        if replicas * threads > cpus:
            raise DeployzooError(f"{replicas} replicas x {threads} threads need {replicas * threads} CPUs; the Ray "
                                 f"cluster has {cpus} (lower --replicas or --threads-per-replica, or add nodes)")
        self.source.recipe.threads = threads
        size = shard_images(len(todo), batch_size, replicas, self.shard_size)
        plan = plan_shards(todo, size)
        queue = deque(plan)
        self.report = {"address": self.address or "local", "cluster_cpus": cpus, "replicas": replicas,
                       "threads_per_replica": threads, "shard_images": size, "shards": len(plan),
                       "engine_shared_via": "Ray object store (the driver's ONNX export)"
                       if self.source.onnx_path else f"checkpoint path on every node ({self.source.recipe.checkpoint})",
                       "cluster_start_s": cluster_s}
        t_start = time.perf_counter()
        actor_class = ray.remote(num_cpus=threads, max_restarts=0)(Replica)
        onnx_ref = ray.put(self.source.onnx_path.read_bytes()) if self.source.onnx_path else None
        self.pool = []
        for _ in range(replicas):
            self._start_replica(ray, actor_class, onnx_ref)
        try:
            ready = ray.get([s.handle.ready.remote() for s in self.pool])
        except RayActorError as exc:
            raise DeployzooError(f"a Ray replica could not open the engine: {exc}") from None
        for state, info in zip(self.pool, ready):
            state.name, state.pid = info["replica"], info["pid"]
        replica_start_s = time.perf_counter() - t_start
        self.report["replica_start_s"] = replica_start_s
        self.report["engine_open_s"] = [round(info["open_s"], 3) for info in ready]

        replacements_left = replicas if self.max_replacements is None else self.max_replacements
        pending: dict[Any, tuple[Any, _ReplicaState]] = {}
        taken: set[int] = set()
        new: dict[str, Any] = {}
        new_skipped: list[dict[str, str]] = []
        stages: dict[str, float] = {}
        get_s = store_s = 0.0
        retried: list[int] = []
        error: str | None = None
        bar = tqdm(total=total, initial=resumed, desc=f"{description} (ray x{replicas})", unit="img",
                   disable=not progress, leave=False)
        t_run = time.perf_counter()
        for state in self.pool:
            state.created = t_run  # replica time in the run counts from here (start-up is reported apart)
        while (queue and error is None) or pending:
            for state in self.pool:
                while state.alive and error is None and queue and state.in_flight < IN_FLIGHT:
                    shard = queue.popleft()
                    ref = state.handle.run_shard.remote(shard.index, shard.items, skip_bad, skip_nonfinite)
                    pending[ref] = (shard, state)
                    state.in_flight += 1
            if not pending:
                if queue and error is None:
                    raise DeployzooError(f"every Ray replica was lost and no replacement could start; "
                                         f"{len(queue)} work shards are left (finished ones are stored: rerun "
                                         f"with --resume)")
                break
            ready_refs, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready_refs:
                shard, state = pending.pop(ref)
                state.in_flight -= 1
                t_get = time.perf_counter()
                try:
                    outcome: ShardOutcome = ray.get(ref)
                except (RayActorError, RayError) as exc:
                    if not _is_lost_replica(exc):
                        raise
                    if state.alive:  # its other shards fail the same way and come back here too
                        state.alive, state.died = False, time.perf_counter()
                        if replacements_left > 0:
                            replacements_left -= 1
                            self._start_replica(ray, actor_class, onnx_ref).name = "replacement"
                    queue.appendleft(shard)
                    retried.append(shard.index)
                    continue
                get_s += time.perf_counter() - t_get
                if outcome.error is not None:
                    error = error or outcome.error
                    continue
                if shard.index in taken:  # a shard is taken once, whatever happens to retries
                    continue
                taken.add(shard.index)
                t_store = time.perf_counter()
                if store is not None:
                    _store_by_batch(store, outcome, batch_size)
                store_s += time.perf_counter() - t_store
                new.update(outcome.results)
                new_skipped += outcome.skipped
                for stage, seconds in outcome.stages.items():
                    stages[stage] = stages.get(stage, 0.0) + seconds
                state.images += len(outcome.results)
                state.busy_s += outcome.busy_s
                state.shards += 1
                state.last_done = time.perf_counter()
                if state.name in ("", "replacement"):
                    state.name = outcome.replica
                bar.update(outcome.images)
                if self.on_shard is not None:
                    self.on_shard(len(taken), self)
        bar.close()
        t_end = time.perf_counter()
        if error is not None:
            resumable = " Finished work shards are stored (--resume continues the run)." if store is not None else ""
            raise DeployzooError(error + resumable)
        wall = t_end - t_run
        self._account(wall, t_end, len(new), get_s, store_s, retried)
        timer = StageTimer(seconds=stages, items=len(new), wall_s=wall, startup_s=cluster_s + replica_start_s)
        return new, new_skipped, timer

    def _account(self, wall: float, t_end: float, images: int, get_s: float, store_s: float,
                 retried: list[int]) -> None:
        per_replica, span_total, busy_total, tail_total = [], 0.0, 0.0, 0.0
        for state in self.pool:
            span = max(0.0, (state.died or t_end) - state.created)
            span_total += span
            busy_total += state.busy_s
            if state.died is None:  # waiting at the end, after its last shard, while others finish theirs
                tail_total += t_end - (state.last_done or state.created)
            per_replica.append({
                "replica": state.number, "name": state.name, "lost": not state.alive and state.died is not None,
                "shards": state.shards, "images": state.images, "busy_s": state.busy_s, "in_run_s": span,
                "images_per_s": state.images / state.busy_s if state.busy_s > 0 else None})
        self.report.update({
            "wall_s": wall, "images_computed": images,
            "images_per_s": images / wall if wall > 0 else None,
            "per_replica": per_replica,
            "overhead": {
                "replica_time_s": span_total, "busy_s": busy_total,
                "share": 1.0 - busy_total / span_total if span_total > 0 else None,
                "tail_share": tail_total / span_total if span_total > 0 else None,
                "scheduling_transfer_share": max(0.0, 1.0 - (busy_total + tail_total) / span_total)
                if span_total > 0 else None,
                "driver_receive_s": get_s, "driver_store_s": store_s,
                "what": "share: of the replicas' time in the run, the part not spent on images; tail_share: "
                        "the part spent waiting after their last shard while others finished (load imbalance); "
                        "scheduling_transfer_share: the rest (sending shards and results, scheduling, a lost "
                        "replica's replacement starting); start-up apart (cluster_start_s, replica_start_s)"},
            "lost_replicas": sum(1 for p in per_replica if p["lost"]),
            "retried_shards": sorted(set(retried)),
        })


def _is_lost_replica(exc: Exception) -> bool:
    """A replica (or its node) died, as opposed to our code raising in it."""
    from ray import exceptions as rx

    lost = tuple(getattr(rx, n) for n in ("RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError",
                                          "LocalRayletDiedError") if hasattr(rx, n))
    return isinstance(exc, lost)


def _store_by_batch(store: ResultStore, outcome: ShardOutcome, batch_size: int) -> None:
    """One result shard per batch of the work shard, as a local run writes them; the skipped images go with
    the last."""
    results = outcome.results
    groups = [results[k:k + batch_size] for k in range(0, len(results), batch_size)] or [[]]
    for k, group in enumerate(groups):
        last = k == len(groups) - 1
        if group or (last and outcome.skipped):
            store.append(group, outcome.skipped if last else ())


def format_report(report: dict[str, Any]) -> str:
    """The Ray part of a run's printout: per-replica throughput, overall images/s, overhead share."""
    if not report:
        return ""
    lines = [f"Ray: {report['replicas']} replicas x {report['threads_per_replica']} threads on a cluster of "
             f"{report['cluster_cpus']} CPUs ({report['address']}); {report['shards']} work shards of "
             f"{report['shard_images']} images; engine shared via {report['engine_shared_via']}",
             "| replica | name | shards | images | busy s | images/s |", "|---:|---|---:|---:|---:|---:|"]
    for r in report.get("per_replica", []):
        rate = "-" if r["images_per_s"] is None else f"{r['images_per_s']:.2f}"
        lines.append(f"| {r['replica']} | {r['name']}{' (lost)' if r['lost'] else ''} | {r['shards']} | "
                     f"{r['images']} | {r['busy_s']:.2f} | {rate} |")
    over = report.get("overhead", {})
    share = over.get("share")
    parts = ("" if over.get("tail_share") is None else
             f": {over['scheduling_transfer_share']:.1%} scheduling and transfer, {over['tail_share']:.1%} "
             f"waiting for the last shards")
    rate = report.get("images_per_s")
    lines.append(f"overall: {report.get('images_computed', 0)} images in {report.get('wall_s', 0):.2f} s = "
                 f"{'-' if rate is None else f'{rate:.2f}'} images/s; Ray overhead "
                 f"{'-' if share is None else f'{share:.1%}'} of replica time{parts} (receive "
                 f"{over.get('driver_receive_s', 0):.2f} s, store {over.get('driver_store_s', 0):.2f} s on the "
                 f"driver); "
                 f"start-up apart: cluster {report.get('cluster_start_s', 0):.1f} s, replicas "
                 f"{report.get('replica_start_s', 0):.1f} s")
    if report.get("retried_shards"):
        lines.append(f"{report['lost_replicas']} replica(s) lost; work shards {report['retried_shards']} were run "
                     f"again elsewhere (each shard's results are taken once)")
    return "\n".join(lines)
