"""run's end-to-end / pure ratio: the steady rate, and pure inference replayed on the run's own batches."""
from __future__ import annotations

import time

import numpy as np
import pytest

from deployzoo import runner
from deployzoo.bench.e2e_ratio import REAL_INPUTS, end_to_end_over_pure, pure_inputs_for, ratio_rounds, replay_pure
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


def _zero_outputs(feeds, ids):
    """A RefineDet-shaped engine that outputs zeros (what the runner does around it is under test)."""
    b = feeds["image"].shape[0]
    return {"odm_loc": np.zeros((b, 6375, 4), np.float32), "odm_conf": np.zeros((b, 6375, 21), np.float32)}


def _no_detections(outputs, meta):
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def test_run_dataset_keeps_its_first_full_batch(refinedet_spec, synthetic_voc):
    dataset = refinedet_spec.evaluation.open(synthetic_voc)
    items = [ImageItem(i, str(dataset.image_path(i))) for i in dataset.ids[:5]]
    seen = []

    def infer(feeds, ids):
        seen.append({k: v.copy() for k, v in feeds.items()})
        return _zero_outputs(feeds, ids)

    run = run_dataset(items, refinedet_spec.preprocess, infer, _no_detections, 2, refinedet_spec.make_feeds, workers=0,
                      progress=False, keep_inputs=True)
    first = run.fed["first_full_batch"]
    assert set(first) == set(seen[0]) and all(np.array_equal(first[k], seen[0][k]) for k in first)
    assert len(run.timer.finished) == 3 and run.timer.steady_rate()["images"] == 3
    # every batch is kept for the replay, in order, with its real image count (the last one padded to 2)
    kept = run.fed["batches"]
    assert [n for _, n in kept] == [2, 2, 1] and run.fed["batches_complete"]
    assert all(np.array_equal(inputs["image"], fed["image"]) for (inputs, _), fed in zip(kept, seen))
    # only when asked: an evaluation of thousands of images keeps nothing
    plain = run_dataset(items, refinedet_spec.preprocess, infer, _no_detections, 2, refinedet_spec.make_feeds, workers=0,
                        progress=False)
    assert plain.fed == {} and plain.extra == {}


def test_run_dataset_stops_keeping_batches_past_the_byte_cap(refinedet_spec, synthetic_voc, monkeypatch):
    dataset = refinedet_spec.evaluation.open(synthetic_voc)
    items = [ImageItem(i, str(dataset.image_path(i))) for i in dataset.ids[:5]]
    one_batch = 2 * 3 * 320 * 320 * 4  # bytes of one batch of 2 RefineDet inputs
    monkeypatch.setattr(runner, "REPLAY_BYTES", 2 * one_batch)
    run = run_dataset(items, refinedet_spec.preprocess, _zero_outputs, _no_detections, 2, refinedet_spec.make_feeds, workers=0,
                      progress=False, keep_inputs=True)
    assert [n for _, n in run.fed["batches"]] == [2, 2] and not run.fed["batches_complete"]


def test_replay_times_each_batch_on_its_own_inputs():
    """Batches of different sizes cost different times: the replay times each one, not the first for all."""
    def infer(inputs):
        time.sleep(inputs["image"].shape[-1] * 1e-4)  # 10 ms for the small batches, 40 ms for the large one

    small, large = {"image": np.zeros((2, 3, 8, 100), np.float32)}, {"image": np.zeros((2, 3, 8, 400), np.float32)}
    replay = replay_pure(infer, [(small, 2), (large, 2), (small, 1)], rounds=3)
    assert replay["images"] == 3 and replay["batches"] == 2 and replay["rounds"] == 3
    assert replay["seconds"] == pytest.approx(0.05, rel=0.5)
    assert replay["images_per_s"] == pytest.approx(3 / replay["seconds"])
    assert replay_pure(infer, [(small, 2)]) is None  # one batch: no steady rate to compare with either


def test_ratio_with_a_replay_compares_the_same_batches():
    timer = StageTimer(items=8, wall_s=3.0, finished=[(100.0, 2), (101.0, 2), (102.0, 2), (110.0, 2)])
    replay = {"images_per_s": 2.5, "images": 4, "seconds": 1.6, "batches": 2, "rounds": 3}  # batches 2 and 3
    ratio = end_to_end_over_pure(timer, [], 2, REAL_INPUTS, replay)
    assert ratio["end_to_end_images_per_s"] == pytest.approx(2.0)  # 4 images in the 2 s after batch 1, not batch 4
    assert ratio["ratio"] == pytest.approx(0.8) and "replayed" in ratio["pure_inputs"]
    assert "(2 batches)" in ratio["end_to_end_basis"]


def test_ratio_rounds_take_the_median_of_alternating_passes():
    first = end_to_end_over_pure(StageTimer(finished=[(0.0, 2), (1.0, 2), (2.0, 2)]), [], 2, "",
                                 {"images_per_s": 2.5, "images": 4, "seconds": 1.6, "batches": 2, "rounds": 3})
    assert first["ratio"] == pytest.approx(0.8)
    rounds = iter([(StageTimer(finished=[(0.0, 2), (1.0, 2), (2.0, 2)]), {"images_per_s": 2.0, "batches": 2}),
                   (StageTimer(finished=[(0.0, 2), (0.5, 2), (1.0, 2)]), {"images_per_s": 2.0, "batches": 2})])
    measured = ratio_rounds(first, lambda: next(rounds), rounds=3)
    assert [r["ratio"] for r in measured["rounds"]] == pytest.approx([0.8, 1.0, 2.0])
    assert measured["ratio"] == pytest.approx(1.0) and "median of 3 rounds" in measured["ratio_basis"]
    # the images/s reported beside the ratio are the median round's, so they divide to it (round 1's read 0.8)
    assert measured["end_to_end_images_per_s"] / measured["pure_images_per_s"] == pytest.approx(measured["ratio"])
    # a ratio without a replay (the benchmark-cell basis) is left as it is: there is nothing to alternate with
    plain = end_to_end_over_pure(StageTimer(finished=[(0.0, 2), (1.0, 2)]), [], 2, REAL_INPUTS)
    assert ratio_rounds(plain, lambda: pytest.fail("no extra pass without a replay")) is plain


def test_steady_rate_starts_where_the_first_inference_ended():
    """With overlap the first batch's post-processing runs during the second inference: a window from the first
    results would leave it out while keeping the last batch's, flattering a short run."""
    timer = StageTimer(finished=[(10.0, 4), (11.0, 4), (12.0, 4)], first_inferred=9.5)
    steady = timer.steady_rate()
    assert steady["seconds"] == pytest.approx(2.5) and steady["images"] == 8
    assert "end of the first batch's inference" in steady["basis"]
    timer.inferred()
    assert timer.first_inferred == 9.5  # only the first call marks


def test_steady_window_ends_with_the_last_inference_not_the_drain():
    """Batch N's own post-processing runs after the last inference with nothing to overlap: draining the pipeline,
    a one-off like filling it, so the window ends at batch N's inference (or batch N-1's post-processing)."""
    # inference ends at 9.5, 10.5, 11.5; results (post-processed) at 10.0, 11.0, 12.5 (the last one drains)
    timer = StageTimer(finished=[(10.0, 4), (11.0, 4), (12.5, 4)], first_inferred=9.5, inference_ends=[9.5, 10.5, 11.5])
    steady = timer.steady_rate()
    assert steady["seconds"] == pytest.approx(2.0) and steady["images"] == 8 and steady["images_per_s"] == pytest.approx(4.0)
    assert "draining not counted" in steady["basis"]
    # post-processing slower than inference: batch N-1's results end the window, at the post-processing's pace
    slow = StageTimer(finished=[(11.0, 4), (13.0, 4), (15.0, 4)], first_inferred=9.5, inference_ends=[9.5, 10.5, 11.5])
    assert slow.steady_rate()["seconds"] == pytest.approx(13.0 - 9.5)
    # ``batches`` cuts both lists at the same batch
    assert timer.steady_rate(2)["seconds"] == pytest.approx(1.0) and timer.steady_rate(2)["images"] == 4


def test_run_dataset_marks_every_inference_end(refinedet_spec, synthetic_voc):
    """One inference end per inferred batch, in order, the first equal to ``first_inferred``."""
    dataset = refinedet_spec.evaluation.open(synthetic_voc)
    items = [ImageItem(i, str(dataset.image_path(i))) for i in dataset.ids[:5]]
    for overlap in (True, False):
        run = run_dataset(items, refinedet_spec.preprocess, _zero_outputs, _no_detections, 2,
                          refinedet_spec.make_feeds, workers=0, progress=False, overlap=overlap)
        ends = run.timer.inference_ends
        assert len(ends) == 3 and ends == sorted(ends) and ends[0] == run.timer.first_inferred
        steady = run.timer.steady_rate()
        assert steady["images"] == 3 and "draining not counted" in steady["basis"]
        # the window ends at the last inference or the previous batch's results, never at the last results
        assert steady["seconds"] == pytest.approx(max(ends[-1], run.timer.finished[-2][0]) - ends[0])


def test_only_leading_full_batches_count_and_too_few_give_no_ratio():
    from deployzoo.bench.e2e_ratio import leading_full_batches, no_ratio

    batches = [({"image": np.zeros(1)}, n) for n in (2, 2, 1, 2)]
    assert [n for _, n in leading_full_batches(batches, 2, 4)] == [2, 2]  # stops at the padded one
    assert [n for _, n in leading_full_batches(batches, 2, 1)] == [2]
    assert leading_full_batches(batches[2:], 2, 4) == []
    timer = StageTimer(items=3, wall_s=2.0)
    none = no_ratio(timer, 2, 1)
    assert none["ratio"] is None and none["wall_images_per_s"] == pytest.approx(1.5)
    assert "1 full batch of 2 images" in none["reason"] and "--num-images of at least 4" in none["reason"]
    assert replay_pure(lambda feeds: None, leading_full_batches(batches, 2, 1)) is None  # nothing to replay


@pytest.mark.slow
def test_run_with_one_full_batch_gives_no_ratio_and_says_why(tmp_path):
    import json

    from deployzoo.cli import main

    out = tmp_path / "run"
    assert main(["run", "refinedet320-vgg16-voc", "--out", str(out), "--num-images", "3", "--batch", "1",
                 "--eval-batch", "2", "--min-seconds", "0.05", "--workers", "0"]) == 0
    ratio = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(c))["end_to_end_over_pure"]
    assert ratio["ratio"] is None and "1 full batch of 2 images" in ratio["reason"]
    text = (out / "report.md").read_text()
    assert "End-to-end / pure-inference throughput: not measured: the evaluation began with 1 full batch" in text
    assert "**End-to-end / pure-inference throughput:" not in text
