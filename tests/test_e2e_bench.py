"""bench --e2e (interleaved end-to-end passes, agreement with the yardstick), the overlapped post-processing of
run_dataset (same results, order, shards, resume and errors as without overlap), and the GPU check's CPU dry run.
No timed assertions: the figures depend on the machine's load."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from deployzoo.bench.e2e import EngineRun, E2EResult, agreement_with, run_passes
from deployzoo.data.loader import ImageItem
from deployzoo.nonfinite import NonFiniteOutputError
from deployzoo.runner import ResultStore, run_dataset
from deployzoo.structures import Detections, LabelMap


def _items(spec, root, n):
    dataset = spec.evaluation.open(root)
    return [ImageItem(i, str(dataset.image_path(i))) for i in dataset.ids[:n]]


class _StubEngine:
    """Returns fixed RefineDet-shaped outputs (scores optionally nudged) and records its calls."""

    def __init__(self, name, outputs, calls, nudge=0.0):
        self.name, self.outputs, self.calls, self.nudge = name, outputs, calls, nudge

    def infer(self, feeds, ids):
        self.calls.append((self.name, ids[0]))
        out = {k: v.copy() for k, v in self.outputs.items()}
        out["odm_conf"] = out["odm_conf"] + self.nudge
        return out


@pytest.fixture(scope="module")
def refinedet_outputs(refinedet_spec):
    rng = np.random.default_rng(0)
    conf = rng.random((1, 6375, 21)).astype(np.float32) ** 8  # few candidates above 0.01: a fast post-process
    return {"arm_loc": (rng.standard_normal((1, 6375, 4)) * 0.1).astype(np.float32),
            "arm_conf": np.tile(np.float32([0.2, 0.8]), (1, 6375, 1)),
            "odm_loc": (rng.standard_normal((1, 6375, 4)) * 0.1).astype(np.float32), "odm_conf": conf}


def test_passes_are_interleaved_and_agreement_is_counted(refinedet_spec, synthetic_voc, refinedet_outputs):
    calls = []
    runs = [EngineRun(name, name.split()[0], name.split()[1], engine=_StubEngine(name, refinedet_outputs, calls, nudge))
            for name, nudge in (("pytorch fp32", 0.0), ("onnxruntime fp32", 0.0), ("openvino fp16", 0.05))]
    runs.append(EngineRun("onnxruntime fp16", "onnxruntime", "fp16", status="unsupported", error="fp32 only"))
    items = _items(refinedet_spec, synthetic_voc, 2)
    run_passes(refinedet_spec, runs, items, repeats=3, warmup=1, progress=False)
    # warm-up: one pass each; then per repeat one pass of every engine, the order rotating
    timed = [name for name, _ in calls[6:]]
    passes = [timed[k] for k in range(0, len(timed), 2)]
    assert passes == ["pytorch fp32", "onnxruntime fp32", "openvino fp16",
                      "onnxruntime fp32", "openvino fp16", "pytorch fp32",
                      "openvino fp16", "pytorch fp32", "onnxruntime fp32"]
    assert all(len(r.samples) == 3 and len(r.samples[0]) == 2 for r in runs[:3])
    assert set(runs[0].samples[0][0]) == {"prepare", "infer", "postprocess", "total"}
    total = runs[0].agreement["reference"]
    assert total > 0 and runs[1].agreement == runs[0].agreement | {} and runs[1].agreement["matched"] == total
    assert runs[2].agreement["matched"] < total  # scores moved by 0.05 > the low-precision rule's 0.02
    result = E2EResult(refinedet_spec.name, [i.path for i in items], "test images", 3, 1, "pytorch fp32", runs)
    rows = {r["engine"]: r for r in result.rows()}
    assert rows["pytorch fp32"]["vs_yardstick"] == pytest.approx(1.0)
    assert rows["onnxruntime fp16"]["status"] == "unsupported"
    text = result.markdown()
    assert "1.00x (yardstick)" in text and f"{total}/{total} matched" in text and "unsupported" in text
    assert "Basis: end to end per image" in text and "yardstick" in text and "interleaved" in text


def test_agreement_of_label_maps():
    a = LabelMap(np.zeros((4, 5), np.uint8))
    b = LabelMap(np.zeros((4, 5), np.uint8))
    b.labels[0, 0] = 3
    assert agreement_with([b], [a], "fp32")["pixels_equal"] == pytest.approx(19 / 20)


def test_bench_e2e_command_writes_json_and_markdown(tmp_path, refinedet_spec, synthetic_voc, capsys):
    from deployzoo.cli import main

    image = _items(refinedet_spec, synthetic_voc, 1)[0].path
    out = tmp_path / "e2e"
    assert main(["bench", "refinedet320-vgg16-voc", "--e2e", "--backends", "pytorch,onnxruntime", "--images", image,
                 "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    report = json.loads((out / "e2e-refinedet320-vgg16-voc.json").read_text())
    assert report["yardstick"] == "pytorch fp32" and report["mode"] == "end to end"
    rows = {r["engine"]: r for r in report["rows"]}
    assert set(rows) == {"pytorch fp32", "onnxruntime fp32"}
    ort = rows["onnxruntime fp32"]
    assert ort["status"] == "ok" and ort["agreement"]["matched"] == ort["agreement"]["reference"] > 0
    assert ort["s_per_image"] > 0 and ort["infer_s"] > 0 and ort["vs_yardstick"] > 0
    md = (out / "e2e-refinedet320-vgg16-voc.md").read_text()
    assert "| engine | median s/image | vs yardstick |" in md and "stand-in weights" in md


# ------------------------------------------------------------------------------ overlapped post-processing


def _fake_postprocess(outputs, meta):
    time.sleep(0.01)  # long enough for the next batch's inference to run meanwhile
    scores = outputs["odm_conf"][:3, 1].astype(np.float32)
    return Detections(outputs["odm_loc"][:3].astype(np.float32), scores, np.arange(3, dtype=np.int64))


def _run(spec, items, infer, store=None, overlap=True, **kw):
    return run_dataset(items, spec.preprocess, infer, _fake_postprocess, 2, spec.make_feeds, store=store, workers=0,
                       progress=False, overlap=overlap, **kw)


def _seeded_infer(calls=None, bad_id=None):
    def infer(feeds, ids):
        if calls is not None:
            calls.append(list(ids))
        batch = feeds["image"].shape[0]
        seeds = [int(i) for i in ids] + [0] * (batch - len(ids))
        out = {"odm_loc": np.stack([np.full((6375, 4), s, np.float32) for s in seeds]),
               "odm_conf": np.stack([np.full((6375, 21), s / 10, np.float32) for s in seeds])}
        for k, image_id in enumerate(ids):
            if image_id == bad_id:
                out["odm_conf"][k, 0, 0] = np.nan
        return out

    return infer


def _shards(directory):
    contents = []
    for shard in sorted((directory / "partial").glob("shard-*.npz")):
        with np.load(shard) as data:
            contents.append({k: data[k].tolist() for k in data.files})
    return contents


def test_overlap_gives_the_same_results_shards_and_order(tmp_path, refinedet_spec, synthetic_voc):
    items = _items(refinedet_spec, synthetic_voc, 7)
    runs = {}
    for overlap in (False, True):
        store = ResultStore(tmp_path / str(overlap), {"x": 1})
        runs[overlap] = _run(refinedet_spec, items, _seeded_infer(), store=store, overlap=overlap)
    assert list(runs[True].results) == list(runs[False].results) == [i.image_id for i in items]
    for image_id, dets in runs[False].results.items():
        assert np.array_equal(runs[True].results[image_id].boxes, dets.boxes)
    assert _shards(tmp_path / "True") == _shards(tmp_path / "False") and len(_shards(tmp_path / "True")) == 4
    assert runs[True].timer.items == 7 and runs[True].timer.startup_s is not None


def test_overlap_resumes_and_stops_on_non_finite_like_before(tmp_path, refinedet_spec, synthetic_voc):
    items = _items(refinedet_spec, synthetic_voc, 7)
    calls = []

    def flaky(feeds, ids):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the third batch, while the second is post-processed
        return _seeded_infer(calls)(feeds, ids)

    with pytest.raises(KeyboardInterrupt):
        _run(refinedet_spec, items, flaky, store=ResultStore(tmp_path / "r", {"x": 1}))
    assert len(_shards(tmp_path / "r")) == 2  # both finished batches were stored
    seen = []
    resumed = _run(refinedet_spec, items, _seeded_infer(seen), store=ResultStore(tmp_path / "r", {"x": 1}, resume=True))
    assert resumed.resumed == 4 and [i for ids in seen for i in ids] == [i.image_id for i in items[4:]]
    assert list(resumed.results) == [i.image_id for i in items]

    for overlap in (False, True):  # non-finite outputs of the 2nd image: the batches before it stored, then the error
        out = tmp_path / f"nan-{overlap}"
        with pytest.raises(NonFiniteOutputError):
            _run(refinedet_spec, items, _seeded_infer(bad_id=items[3].image_id), store=ResultStore(out, {"x": 1}),
                 overlap=overlap)
    assert _shards(tmp_path / "nan-True") == _shards(tmp_path / "nan-False")
    skipped = _run(refinedet_spec, items, _seeded_infer(bad_id=items[3].image_id), skip_bad=True)
    assert [s["image_id"] for s in skipped.skipped] == [items[3].image_id] and len(skipped.results) == 6


# ------------------------------------------------------------------------------ the GPU script's Python part


def test_gpu_check_dry_run_on_cpu(tmp_path):
    from deployzoo.bench.gpu_check import main

    assert main(["--out", str(tmp_path), "--device", "cpu", "--dry-run"]) == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    cells = report["cells"]
    eager = [c for c in cells if c["mode"] == "eager"]
    assert [c["batch"] for c in eager] == [1, 2] and all(c["status"] == "ok" for c in cells)
    assert sum(bool(c.get("best_batch")) for c in eager) == 1
    assert any("dry run" in c["mode"] for c in cells)  # the CUDA-graph cell, replaced by eager on the CPU
    md = (tmp_path / "gpu-check.md").read_text()
    assert "| model | mode | precision | batch |" in md and "host latency" in md


def test_gpu_check_refuses_cuda_without_a_device(tmp_path):
    import torch

    from deployzoo.bench.gpu_check import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(SystemExit, match="no CUDA device"):
        main(["--out", str(tmp_path), "--device", "cuda", "--dry-run"])
