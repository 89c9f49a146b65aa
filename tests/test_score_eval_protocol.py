"""`score` on eval's own detections.json, without --protocol, uses the protocol eval used (its metrics.json
beside the file), so it prints eval's figure; before, it used the task's first (voc-devkit) and differed."""
from __future__ import annotations

import json

import numpy as np

from deployzoo.cli import main


def _eval_like_run(synthetic_voc, folder, protocol, metric="VOC07 11-point mAP"):
    from deployzoo.predictions import records_for, write_predictions
    from deployzoo.structures import Detections
    from deployzoo.tasks.voc_detection import VOCDetectionTask

    task = VOCDetectionTask()
    dataset = task.open(synthetic_voc)
    annotations, _ = task.load_ground_truth(dataset)
    rng = np.random.default_rng(1)
    dets = [(dataset.image_path(k).name,
             Detections((a.boxes - 1 + rng.normal(0, 2, a.boxes.shape)).astype(np.float32),
                        rng.uniform(size=len(a.labels)).astype(np.float32), a.labels.astype(np.int64)))
            for k, a in annotations.items()]
    spec_like = type("S", (), {"class_names": task.class_names, "category_ids": None})
    folder.mkdir()
    write_predictions(folder / "detections.json", records_for(spec_like, dets))
    (folder / "metrics.json").write_text(json.dumps({"model": "refinedet320-vgg16-voc", "protocol": protocol,
                                                     "headline": {"metric": metric, "value": 1.0}}))
    return folder / "detections.json"


def _score(synthetic_voc, predictions, out, *extra):
    assert main(["score", "--data", str(synthetic_voc), "--predictions", str(predictions), "--out", str(out),
                 *extra]) == 0
    return json.loads((out / "metrics.json").read_text())["protocol"]


def test_score_follows_the_eval_runs_protocol_and_says_so(synthetic_voc, tmp_path, capsys):
    predictions = _eval_like_run(synthetic_voc, tmp_path / "eval", "refinedet-pytorch")
    assert _score(synthetic_voc, predictions, tmp_path / "a") == "refinedet-pytorch"
    assert "protocol refinedet-pytorch: the one the eval run used" in capsys.readouterr().out
    assert _score(synthetic_voc, predictions, tmp_path / "b", "--protocol", "mmdet") == "mmdet"  # asked: obeyed
    assert "the one the eval run used" not in capsys.readouterr().out


def test_a_metrics_json_of_another_metric_or_no_eval_run_is_ignored(synthetic_voc, tmp_path):
    other = _eval_like_run(synthetic_voc, tmp_path / "coco-run", "standard", metric="COCO box AP")
    assert _score(synthetic_voc, other, tmp_path / "a") == "voc-devkit"  # the task's first, as documented
    (tmp_path / "coco-run" / "metrics.json").write_text("[1, 2]")
    assert _score(synthetic_voc, other, tmp_path / "b") == "voc-devkit"


def test_a_folder_as_predictions_and_a_file_as_data_are_named_as_such(synthetic_voc, tmp_path, capsys):
    assert main(["score", "--data", str(synthetic_voc), "--predictions", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a folder, not a predictions file" in capsys.readouterr().err
    file = tmp_path / "set.json"
    file.write_text("[]")
    assert main(["score", "--data", str(file), "--predictions", str(file)]) == 2
    assert f"{file}: is a file, not a dataset directory" in capsys.readouterr().err
