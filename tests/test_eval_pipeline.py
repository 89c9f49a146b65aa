"""Dataset evaluation: backend agreement on mAP, padding of a last partial batch, resume, bad input."""
from __future__ import annotations

import json
import shutil

import pytest

from deployzoo.cli import main
from deployzoo.errors import BadInputError, DeployzooError
from deployzoo.pipeline import evaluate_dataset, open_engine


def _eval(spec, data, engine, batch, out, **kw):
    return evaluate_dataset(spec, data, engine.infer, batch, out, {"backend": engine.backend.name}, workers=0,
                            progress=False, **kw)


def test_onnxruntime_and_pytorch_give_the_same_map(tmp_path, refinedet_spec, refinedet_loaded, refinedet_onnx,
                                                   synthetic_voc):
    torch_engine = open_engine(refinedet_spec, "pytorch", 1, loaded=refinedet_loaded)
    reference = _eval(refinedet_spec, synthetic_voc, torch_engine, 1, tmp_path / "torch")
    assert reference.run.computed == 7
    for batch in (1, 3):  # 7 images: batch 3 leaves a last batch of 1 padded with 2 zero images
        ort = open_engine(refinedet_spec, "onnxruntime", batch, onnx_path=refinedet_onnx)
        result = _eval(refinedet_spec, synthetic_voc, ort, batch, tmp_path / f"ort{batch}")
        assert result.run.computed == 7 and len(result.run.results) == 7
        assert round(result.headline, 4) == round(reference.headline, 4)
        for image_id, dets in reference.run.results.items():
            assert len(result.run.results[image_id]) == len(dets)
    metrics = json.loads((tmp_path / "ort3" / "metrics.json").read_text())
    assert metrics["images_evaluated"] == 7
    stages = {r["stage"] for r in metrics["stages"]["rows"]}
    assert stages == {"read", "preprocess", "infer", "postprocess", "end to end"}
    detections = json.loads((tmp_path / "ort3" / "detections.json").read_text())
    assert {"file_name", "category", "category_id", "bbox", "score"} <= set(detections[0])


def test_interrupted_evaluation_resumes_without_recomputing(tmp_path, refinedet_spec, refinedet_loaded, synthetic_voc):
    engine = open_engine(refinedet_spec, "pytorch", 2, loaded=refinedet_loaded)
    calls = []

    def flaky_infer(batch, ids):
        calls.append(list(ids))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the third batch
        return engine.infer(batch, ids)

    out = tmp_path / "run"
    fingerprint = {"backend": "pytorch"}
    with pytest.raises(KeyboardInterrupt):
        evaluate_dataset(refinedet_spec, synthetic_voc, flaky_infer, 2, out, fingerprint, workers=0, progress=False)
    with pytest.raises(DeployzooError, match="--resume"):
        evaluate_dataset(refinedet_spec, synthetic_voc, engine.infer, 2, out, fingerprint, workers=0, progress=False)
    seen = []

    def counting_infer(batch, ids):
        seen.extend(ids)
        return engine.infer(batch, ids)

    resumed = evaluate_dataset(refinedet_spec, synthetic_voc, counting_infer, 2, out, fingerprint, resume=True,
                               workers=0, progress=False)
    assert resumed.run.resumed == 4 and resumed.run.computed == 3
    assert seen == ["000005", "000006", "000007"]
    fresh = _eval(refinedet_spec, synthetic_voc, engine, 2, tmp_path / "fresh")
    assert resumed.headline == fresh.headline
    with pytest.raises(DeployzooError, match="different settings"):
        evaluate_dataset(refinedet_spec, synthetic_voc, engine.infer, 2, out, {"backend": "other"}, resume=True,
                         workers=0, progress=False)


@pytest.fixture()
def damaged_voc(tmp_path, synthetic_voc):
    root = tmp_path / "VOCdevkit"
    shutil.copytree(synthetic_voc, root)
    images = root / "VOC2007" / "JPEGImages"
    data = (images / "000002.jpg").read_bytes()
    (images / "000002.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (images / "000004.jpg").unlink()  # listed in test.txt but absent
    return root


def test_bad_images_stop_the_run_naming_the_file_or_are_skipped(tmp_path, refinedet_spec, refinedet_loaded, damaged_voc):
    engine = open_engine(refinedet_spec, "pytorch", 2, loaded=refinedet_loaded)
    out = tmp_path / "strict"
    with pytest.raises(BadInputError, match="000002.jpg"):
        _eval(refinedet_spec, damaged_voc, engine, 2, out)
    assert not (out / "partial").exists()  # found by the dataset check, before any inference
    # a file found bad only while running (here: handed to the runner unchecked) keeps the batches before it
    from deployzoo.data.loader import ImageItem
    from deployzoo.runner import ResultStore, run_dataset

    dataset = refinedet_spec.evaluation.open(damaged_voc)
    items = [ImageItem(i, str(dataset.image_path(i))) for i in dataset.ids]
    with pytest.raises(BadInputError, match="000002.jpg"):
        run_dataset(items, refinedet_spec.preprocess, engine.infer, refinedet_spec.make_postprocess(), 2,
                    refinedet_spec.make_feeds, store=ResultStore(tmp_path / "runner", {}), workers=0, progress=False)
    done, _ = ResultStore(tmp_path / "runner", {}, resume=True).load()
    assert list(done) == ["000001"]
    result = _eval(refinedet_spec, damaged_voc, engine, 2, tmp_path / "skip", skip_bad=True)
    skipped = {s["image_id"]: s["problem"] for s in result.summary["images_skipped"]}
    assert set(skipped) == {"000002", "000004"}
    assert "listed in" in skipped["000004"]
    assert result.summary["images_evaluated"] == 5 and result.metrics.num_images == 5


def test_bad_annotation_is_reported_before_any_inference(tmp_path, refinedet_spec, synthetic_voc):
    root = tmp_path / "VOCdevkit"
    shutil.copytree(synthetic_voc, root)
    xml = root / "VOC2007" / "Annotations" / "000003.xml"
    xml.write_text(xml.read_text().replace("<ymax>", "<ymaxx>").replace("</ymax>", "</ymaxx>"))

    def never(batch, ids):
        raise AssertionError("inference must not start")

    with pytest.raises(BadInputError, match=r"000003\.xml.*ymax"):
        evaluate_dataset(refinedet_spec, root, never, 2, tmp_path / "o", {}, workers=0, progress=False)


def test_eval_command_with_worker_processes_and_quirk_protocol(tmp_path, refinedet_checkpoint, synthetic_voc, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "refinedet320-vgg16-voc", "--data", str(synthetic_voc), "--checkpoint",
                 str(refinedet_checkpoint), "--backend", "pytorch", "--batch", "4", "--workers", "1",
                 "--protocol", "refinedet-pytorch", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| **mAP** |" in text and "end to end" in text and "refinedet-pytorch protocol" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["protocol"] == "refinedet-pytorch"
    assert metrics["images_evaluated"] == 7


def test_resume_of_a_skip_bad_run_counts_each_skipped_image_once(tmp_path, synthetic_voc, capsys):
    """eval --skip-bad with a missing image, then --resume on the same directory: still one image skipped."""
    root = tmp_path / "VOCdevkit"
    shutil.copytree(synthetic_voc, root)
    (root / "VOC2007" / "JPEGImages" / "000004.jpg").unlink()
    out = tmp_path / "eval"
    args = ["eval", "refinedet320-vgg16-voc", "--data", str(root), "--backend", "pytorch", "--batch", "4",
            "--workers", "0", "--skip-bad", "--limit", "5", "--out", str(out)]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "1 images skipped" in first
    assert len(json.loads((out / "metrics.json").read_text())["images_skipped"]) == 1
    assert main([*args, "--resume"]) == 0
    again = capsys.readouterr().out
    assert "1 images skipped" in again and "2 images skipped" not in again
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["image_id"] for s in metrics["images_skipped"]] == ["000004"]
    assert metrics["images_evaluated"] == 4


def test_result_store_load_lists_a_skipped_image_once(tmp_path):
    import numpy as np

    from deployzoo.runner import ResultStore
    from deployzoo.structures import Detections

    store = ResultStore(tmp_path, {"model": "m"})
    dets = Detections(np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.zeros(1, np.int64), None)
    store.append([("a", dets)], [{"image_id": "b", "path": "b.jpg", "problem": "image file not found"}])
    results, skipped = ResultStore(tmp_path, {"model": "m"}, resume=True).load()
    assert list(results) == ["a"] and [s["image_id"] for s in skipped] == ["b"]
