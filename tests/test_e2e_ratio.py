"""run's end-to-end / pure ratio: the steady rate, and pure inference timed on the run's own first batch."""
from __future__ import annotations

import time

import numpy as np
import pytest

from deployzoo.bench.e2e_ratio import REAL_INPUTS, end_to_end_over_pure, pure_inputs_for
from deployzoo.bench.pure import bench_pure
from deployzoo.bench.timing import StageTimer
from deployzoo.data.loader import ImageItem
from deployzoo.runner import run_dataset
from deployzoo.structures import Detections


def test_steady_rate_counts_from_the_first_batch_results():
    timer = StageTimer()
    assert timer.steady_rate() is None
    timer.finished = [(10.0, 4), (10.5, 4), (11.0, 4), (12.0, 2)]  # (time, images) of each finished batch
    steady = timer.steady_rate()
    assert steady["images"] == 10 and steady["seconds"] == pytest.approx(2.0) and steady["batches"] == 3
    assert steady["images_per_s"] == pytest.approx(5.0)
    timer.finished = timer.finished[:1]
    assert timer.steady_rate() is None  # one batch: no interval to measure
    timer.count(3)
    assert timer.items == 3 and len(timer.finished) == 2 and timer.finished[1][1] == 3


def test_pure_inputs_are_the_sample_sliced_or_repeated():
    sample = {"image": np.arange(3 * 2, dtype=np.float32).reshape(3, 2), "img_hw": np.float32([[1, 2], [3, 4], [5, 6]])}
    inputs_for, said = pure_inputs_for(sample, fallback=lambda b: {})
    assert said == REAL_INPUTS
    assert np.array_equal(inputs_for(3)["image"], sample["image"])
    assert np.array_equal(inputs_for(2)["img_hw"], sample["img_hw"][:2])
    assert np.array_equal(inputs_for(7)["image"][:, 0], np.float32([0, 2, 4, 0, 2, 4, 0]))
    fallback = lambda b: {"image": np.zeros((b, 2), np.float32)}  # noqa: E731
    inputs_for, said = pure_inputs_for(None, fallback)
    assert inputs_for is fallback and "example inputs" in said


class _Backend:
    """A stand-in engine with a fixed cost per image (for bench_pure)."""

    name, precision, source, batch_size = "stub", "fp32", "stub", 2
    input_shapes = {"image": (None, 3, 8, 8)}

    def check_inputs(self, inputs):
        pass

    def infer(self, inputs):
        time.sleep(0.002 * inputs["image"].shape[0])
        return {"out": inputs["image"][:, :1]}

    def native_call(self, inputs):
        return None

    def describe(self):
        return {"backend": "stub"}


def test_ratio_uses_the_steady_rate_and_names_its_basis():
    # 6 images in 3 batches; the run's wall clock (2 s) also holds the first batch, the steady rate does not.
    timer = StageTimer(items=6, wall_s=2.0, finished=[(100.5, 2), (101.0, 2), (101.5, 2)])
    bench = [bench_pure(_Backend(), warmup=1, min_iters=3, min_seconds=0.0, inputs={"image": np.zeros((2, 3, 8, 8), np.float32)})]
    ratio = end_to_end_over_pure(timer, bench, 2, REAL_INPUTS)
    steady = timer.steady_rate()["images_per_s"]
    assert ratio["end_to_end_images_per_s"] == steady and ratio["pure_batch"] == 2
    assert ratio["ratio"] == pytest.approx(steady / bench[0].stats.throughput)
    assert "steady rate" in ratio["end_to_end_basis"] and ratio["pure_inputs"] == REAL_INPUTS
    assert steady == pytest.approx(4.0) and ratio["wall_images_per_s"] == pytest.approx(3.0)
    one = StageTimer()
    with one.run():
        one.count(2)
    assert "wall clock" in end_to_end_over_pure(one, bench, 2, REAL_INPUTS)["end_to_end_basis"]
    assert end_to_end_over_pure(one, [], 2, REAL_INPUTS)["ratio"] is None


def test_run_dataset_keeps_its_first_full_batch(refinedet_spec, synthetic_voc):
    dataset = refinedet_spec.evaluation.open(synthetic_voc)
    items = [ImageItem(i, str(dataset.image_path(i))) for i in dataset.ids[:5]]
    seen = []

    def infer(feeds, ids):
        seen.append({k: v.copy() for k, v in feeds.items()})
        b = feeds["image"].shape[0]
        return {"odm_loc": np.zeros((b, 6375, 4), np.float32), "odm_conf": np.zeros((b, 6375, 21), np.float32)}

    def post(outputs, meta):
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    run = run_dataset(items, refinedet_spec.preprocess, infer, post, 2, refinedet_spec.make_feeds, workers=0,
                      progress=False)
    first = run.extra["first_full_batch"]
    assert set(first) == set(seen[0]) and all(np.array_equal(first[k], seen[0][k]) for k in first)
    assert len(run.timer.finished) == 3 and run.timer.steady_rate()["images"] == 3
