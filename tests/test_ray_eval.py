"""Evaluation and prediction over a Ray cluster (issue 19): exact agreement with a local run, a replica killed in
the middle, --resume across local and Ray runs, and the message without Ray installed.

The Ray tests start one local cluster limited to 2 CPUs for the module and stop it at the end."""
from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest

from deployzoo.cli import main
from deployzoo.data.loader import ImageItem
from deployzoo.distributed.shards import MAX_SHARD_IMAGES, plan_shards, shard_images
from deployzoo.pipeline import evaluate_dataset, open_engine, predict_files


def _items(n: int) -> list[ImageItem]:
    return [ImageItem(f"{k:06d}", f"/data/{k:06d}.jpg") for k in range(n)]


def test_work_shards_are_whole_batches_in_run_order():
    assert shard_images(7, 3, 2) == 3  # about four shards per replica, rounded up to a whole batch
    assert shard_images(5000, 8, 2) == MAX_SHARD_IMAGES
    assert shard_images(5000, 100, 2) == 100  # never less than one batch
    assert shard_images(10, 4, 1, requested=5) == 8
    plan = plan_shards(_items(7), 3)
    assert [len(s.items) for s in plan] == [3, 3, 1] and [s.index for s in plan] == [0, 1, 2]
    assert [i.image_id for s in plan for i in s.items] == [i.image_id for i in _items(7)]
    with pytest.raises(ValueError):
        shard_images(7, 1, 1, requested=0)


def test_ray_flag_without_ray_says_how_to_install_before_any_work(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as when it is not installed
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "refinedet320-vgg16-voc", "--data", str(tmp_path / "missing"), "--ray"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "deployzoo[ray]" in err and "pip install" in err
    assert not (tmp_path / "missing").exists()


# ---- with a Ray cluster ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'deployzoo[ray]'")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _runner(engine, **kw):
    from deployzoo.distributed.ray_eval import RayRunner, source_from_engine

    return RayRunner(source_from_engine(engine, "onnxruntime"), **kw)


def _evaluate(spec, data, engine, batch, out, runner=None, **kw):
    return evaluate_dataset(spec, data, engine.infer, batch, out, {"backend": "onnxruntime"}, workers=0,
                            progress=False, runner=runner, **kw)


def _same_results(a, b):
    assert list(a) == list(b)
    for image_id, dets in a.items():
        other = b[image_id]
        assert np.array_equal(dets.boxes, other.boxes) and np.array_equal(dets.scores, other.scores)
        assert np.array_equal(dets.labels, other.labels)


def _stored_ids(out) -> list[str]:
    ids = []
    for shard in sorted((out / "partial").glob("shard-*.npz")):
        with np.load(shard, allow_pickle=False) as data:
            ids += data["ids"].tolist()
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("batch, replicas", [(1, 2), (3, 2)])  # one replica: in the resume test
def test_ray_metrics_equal_a_local_run_to_the_last_digit(tmp_path, ray_cluster, refinedet_spec, refinedet_onnx,
                                                          synthetic_voc, batch, replicas):
    engine = open_engine(refinedet_spec, "onnxruntime", batch, onnx_path=refinedet_onnx, threads=1)
    local = _evaluate(refinedet_spec, synthetic_voc, engine, batch, tmp_path / "local")
    runner = _runner(engine, replicas=replicas, threads_per_replica=1)
    distributed = _evaluate(refinedet_spec, synthetic_voc, engine, batch, tmp_path / "ray", runner)
    assert distributed.metrics.to_dict() == local.metrics.to_dict()
    assert distributed.headline == local.headline
    _same_results(distributed.run.results, local.run.results)
    assert (tmp_path / "ray" / "detections.json").read_text() == (tmp_path / "local" / "detections.json").read_text()
    # the same result shards as the local run: one per batch, every image once
    assert sorted(_stored_ids(tmp_path / "ray")) == sorted(_stored_ids(tmp_path / "local"))
    assert len(list((tmp_path / "ray" / "partial").glob("shard-*.npz"))) == \
        len(list((tmp_path / "local" / "partial").glob("shard-*.npz")))
    report = json.loads((tmp_path / "ray" / "metrics.json").read_text())["ray"]
    assert report["replicas"] == replicas and report["images_computed"] == 7
    assert sum(r["images"] for r in report["per_replica"]) == 7
    over = report["overhead"]
    assert 0.0 <= over["share"] < 1.0 and report["images_per_s"] > 0
    assert over["tail_share"] + over["scheduling_transfer_share"] == pytest.approx(over["share"], abs=1e-9)


@pytest.mark.slow
def test_a_killed_replica_loses_nothing_and_counts_nothing_twice(tmp_path, ray_cluster, refinedet_spec,
                                                                 refinedet_onnx, synthetic_voc):
    engine = open_engine(refinedet_spec, "onnxruntime", 1, onnx_path=refinedet_onnx, threads=1)
    local = _evaluate(refinedet_spec, synthetic_voc, engine, 1, tmp_path / "local")
    killed = []

    def kill_a_busy_replica(done, runner):
        if killed:
            return
        victim = next(s for s in runner.pool if s.alive and s.in_flight > 0)
        os.kill(victim.pid, signal.SIGKILL)  # the replica's process dies in the middle of its shards
        killed.append(victim.number)

    runner = _runner(engine, replicas=2, threads_per_replica=1, on_shard=kill_a_busy_replica)
    distributed = _evaluate(refinedet_spec, synthetic_voc, engine, 1, tmp_path / "ray", runner)
    report = distributed.run.extra["ray"]
    assert killed and report["lost_replicas"] == 1 and report["retried_shards"]
    assert distributed.run.computed == 7
    assert distributed.metrics.to_dict() == local.metrics.to_dict()
    _same_results(distributed.run.results, local.run.results)
    stored = _stored_ids(tmp_path / "ray")
    assert sorted(stored) == sorted(local.run.results) and len(stored) == len(set(stored))  # each image once


@pytest.mark.slow
def test_resume_works_across_local_and_ray_runs(tmp_path, ray_cluster, refinedet_spec, refinedet_onnx,
                                                synthetic_voc):
    engine = open_engine(refinedet_spec, "onnxruntime", 2, onnx_path=refinedet_onnx, threads=1)
    fresh = _evaluate(refinedet_spec, synthetic_voc, engine, 2, tmp_path / "fresh")
    calls = []

    def interrupted_infer(feeds, ids):
        calls.append(list(ids))
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the local run's third batch
        return engine.infer(feeds, ids)

    out = tmp_path / "local-then-ray"
    with pytest.raises(KeyboardInterrupt):
        evaluate_dataset(refinedet_spec, synthetic_voc, interrupted_infer, 2, out, {"backend": "onnxruntime"},
                         workers=0, progress=False)
    resumed = _evaluate(refinedet_spec, synthetic_voc, engine, 2, out, _runner(engine, replicas=2), resume=True)
    assert resumed.run.resumed == 4 and resumed.run.computed == 3
    assert resumed.metrics.to_dict() == fresh.metrics.to_dict()
    _same_results(resumed.run.results, fresh.run.results)

    def stop_after_two_shards(done, runner):
        if done == 2:
            raise KeyboardInterrupt  # Ctrl-C once two work shards are stored

    out = tmp_path / "ray-then-local"
    with pytest.raises(KeyboardInterrupt):
        _evaluate(refinedet_spec, synthetic_voc, engine, 2, out,
                  _runner(engine, replicas=1, shard_size=2, on_shard=stop_after_two_shards))
    stored = _stored_ids(out)
    assert len(stored) == 4
    resumed = _evaluate(refinedet_spec, synthetic_voc, engine, 2, out, resume=True)
    assert resumed.run.resumed == 4 and resumed.run.computed == 3
    assert resumed.metrics.to_dict() == fresh.metrics.to_dict()
    _same_results(resumed.run.results, fresh.run.results)
    assert sorted(_stored_ids(out)) == sorted(fresh.run.results)  # the local resume added the 3 others, once


@pytest.mark.slow
def test_predict_over_ray_gives_the_local_records(tmp_path, ray_cluster, refinedet_spec, refinedet_onnx,
                                                  synthetic_voc):
    images = sorted((synthetic_voc / "VOC2007" / "JPEGImages").glob("*.jpg"))[:5]
    engine = open_engine(refinedet_spec, "onnxruntime", 2, onnx_path=refinedet_onnx, threads=1)
    local = predict_files(engine, images, max_dets=20)
    distributed = predict_files(engine, images, max_dets=20, runner=_runner(engine, replicas=2))
    assert distributed == local and {r["path"] for r in local} <= {str(p) for p in images}


@pytest.mark.slow
def test_matrix_cells_run_as_ray_tasks_alone_on_the_node(tmp_path, ray_cluster):
    args = ["matrix", "--models", "refinedet320-vgg16-voc", "--backends", "onnxruntime", "--precisions", "fp32",
            "--batch", "1", "--iters", "2", "--min-seconds", "0.2", "--warmup", "1", "--out", str(tmp_path / "m")]
    assert main([*args, "--ray"]) == 0
    path = tmp_path / "m" / "cells" / "refinedet320-vgg16-voc" / "onnxruntime-fp32-b1.json"
    cell = json.loads(path.read_text())
    assert cell["status"] == "ok" and cell["stats"]["n"] >= 2
    assert cell["ray"]["num_cpus"] == 2  # the whole node's CPUs: no other cell or replica beside it
    before = path.read_text()
    assert main(args) == 0  # a local run reuses the cell the Ray run stored (measuring again would change it)
    assert path.read_text() == before


@pytest.mark.slow
def test_eval_command_over_ray_then_resumed_locally(tmp_path, ray_cluster, refinedet_checkpoint, synthetic_voc, capsys):
    out = tmp_path / "eval"
    args = ["eval", "refinedet320-vgg16-voc", "--data", str(synthetic_voc), "--checkpoint", str(refinedet_checkpoint),
            "--batch", "2", "--pictures", "0", "--out", str(out)]
    assert main([*args, "--ray", "--replicas", "2", "--threads-per-replica", "1"]) == 0
    text = capsys.readouterr().out
    assert "Ray: 2 replicas x 1 threads" in text and "images/s; Ray overhead" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ray"]["images_computed"] == 7 and len(metrics["ray"]["per_replica"]) == 2
    # the Ray run's fingerprint is the local run's: a local --resume finds every image done
    assert main([*args, "--resume"]) == 0
    assert "resumed: 7 images taken from the interrupted run, 0 computed now" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["metrics"] == metrics["metrics"]
