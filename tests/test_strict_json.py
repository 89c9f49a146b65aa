"""No JSON file deployzoo writes holds NaN or Infinity: strict JSON, null where a value is undefined, with the reason."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deployzoo import jsonio
from deployzoo.bench.report import to_json, write_csv, write_json
from deployzoo.cli import main
from deployzoo.data.loader import ImageItem
from deployzoo.pipeline import Engine
from deployzoo.predictions import write_predictions
from deployzoo.registry import get_spec
from deployzoo.runner import ResultStore
from deployzoo.verify import compare_engines
from test_nonfinite import _FakeBackend, _fake_infer, _write_dumps

REFINEDET = "refinedet320-vgg16-voc"


def strict_load(path: Path):
    def refuse(token):
        raise AssertionError(f"{path} holds {token}: not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_non_finite_values_become_null_with_the_reason():
    obj = {"a": float("nan"), "b": [1.0, np.float32("inf")], "c": {"d": -np.inf, "e": np.float64(2.5)}, "f": None}
    text = jsonio.dumps(obj, reasons={"a": "no ground truth"})
    data = json.loads(text, parse_constant=lambda t: pytest.fail(t))
    assert data["a"] is None and data["b"] == [1.0, None] and data["c"] == {"d": None, "e": 2.5} and data["f"] is None
    assert data["null_values"] == {"a": "NaN: no ground truth", "b[1]": "Infinity: infinite",
                                   "c.d": "-Infinity: minus infinity"}
    assert "null_values" not in json.loads(jsonio.dumps({"a": 1.0}))  # nothing to explain, nothing added
    assert json.loads(to_json({"x": np.float32("nan")}))["null_values"]["x"].startswith("NaN: undefined")
    with pytest.raises(ValueError, match=r"\[0\]"):  # a list cannot say why: a non-finite value there is our bug
        jsonio.dumps([float("nan")])


def test_write_json_and_csv_are_strict(tmp_path):
    path = write_json(tmp_path / "r.json", {"stats": {"throughput": float("inf")}, "nested": [{"v": float("nan")}]})
    data = strict_load(path)
    assert data["stats"]["throughput"] is None and set(data["null_values"]) == {"stats.throughput", "nested[0].v"}
    csv_path = write_csv(tmp_path / "r.csv", [{"guard": {"delta": float("nan")}}])
    assert "NaN" not in csv_path.read_text() and "null" in csv_path.read_text()


def test_predictions_with_a_non_finite_value_are_refused_not_written(tmp_path):
    records = [{"file_name": "a.jpg", "bbox": [0.0, 0.0, 1.0, 1.0], "score": 0.5},
               {"file_name": "b.jpg", "bbox": [0.0, float("inf"), 1.0, 1.0], "score": 0.5}]
    with pytest.raises(ValueError, match="internal error: a non-finite value reached .*b.jpg"):
        write_predictions(tmp_path / "p.json", records)
    assert not (tmp_path / "p.json").exists()
    assert strict_load(write_predictions(tmp_path / "q.json", records[:1])) == records[:1]
    assert strict_load(write_predictions(tmp_path / "e.json", [])) == []


def test_run_fingerprint_is_strict_and_still_resumes(tmp_path):
    fingerprint = {"model": "m", "accuracy_guard": {"fp32": float("nan"), "delta": None}}
    store = ResultStore(tmp_path, fingerprint)
    store.append([], [{"image_id": "1", "path": "x", "problem": "bad"}])
    assert strict_load(tmp_path / "run-fingerprint.json")["accuracy_guard"]["fp32"] is None
    ResultStore(tmp_path, fingerprint, resume=True)  # the same settings (NaN and all) resume


def _all_difficult(root: Path) -> Path:
    """Every object marked difficult: VOC07 mAP has no ground truth to score, so it is undefined (NaN)."""
    for xml in (root / "VOC2007" / "Annotations").glob("*.xml"):
        xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>"))
    return root


def items_of(spec, root: Path, ids: list[str]) -> list[ImageItem]:
    dataset = spec.evaluation.open(root)
    return [ImageItem(i, str(dataset.image_path(i))) for i in ids]


def _fake_compare_engines(spec, ids: list[str]):
    calls = iter(ids)
    reference = Engine(spec, _FakeBackend("fp32", lambda feeds, _: _fake_infer({})(feeds, ["x"])), None, None, "fake")
    engine = Engine(spec, _FakeBackend("fp16", lambda feeds, _: _fake_infer({ids[0]: "nan"})(feeds, [next(calls)])),
                    None, None, "fake")
    return engine, reference


def test_every_json_a_command_writes_is_strict(tmp_path, refinedet_onnx):
    spec = get_spec(REFINEDET)
    voc = _all_difficult(spec.evaluation.make_synthetic(tmp_path / "voc", num_images=2, seed=2))
    ids = list(spec.evaluation.open(voc).ids)
    out = tmp_path / "out"
    dumps = _write_dumps(tmp_path / "dumps", ids, ids[1], "nan")
    assert main(["eval", REFINEDET, "--data", str(voc), "--dumps", str(dumps), "--workers", "0", "--skip-bad",
                 "--out", str(out / "eval")]) == 0
    metrics = strict_load(out / "eval" / "metrics.json")
    assert metrics["headline"]["value"] is None
    assert "no ground truth to score against" in metrics["null_values"]["headline.value"]
    image = str(spec.evaluation.open(voc).image_path(ids[0]))
    assert main(["predict", REFINEDET, "--onnx", str(refinedet_onnx), "--out", str(out / "predict"), image]) == 0
    # compare writes write_json(agreement.to_dict()); fake engines (one of them giving NaN) keep this test fast
    agreement = compare_engines(*_fake_compare_engines(spec, ids), items_of(spec, voc, ids))
    assert not agreement.ok
    write_json(out / "compare" / "compare.json", agreement.to_dict())
    assert main(["bench", str(refinedet_onnx), "--batch", "1", "--iters", "1", "--warmup", "0", "--min-seconds", "0",
                 "--no-native", "--out", str(out / "bench")]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    for name in ("eval/metrics.json", "eval/detections.json", "eval/run-fingerprint.json",
                 "predict/predictions.json", "compare/compare.json", "bench/bench-onnxruntime-fp32.json"):
        assert name in written
    for name in written:
        strict_load(out / name)


def test_a_file_name_that_is_not_utf8_is_written_escaped(tmp_path):
    import json
    import os

    from deployzoo.jsonio import write_json

    name = os.fsdecode(b"bad\xff.png")  # how Python hands over an undecodable file name (lone surrogate)
    path = write_json(tmp_path / "info.json", {"images_skipped": [{"path": name, "problem": "empty"}], "note": "é"})
    assert json.loads(path.read_text(encoding="ascii")) == {"images_skipped": [{"path": name, "problem": "empty"}],
                                                            "note": "é"}
    # valid names stay as they are (UTF-8, not escaped)
    assert "é" in write_json(tmp_path / "plain.json", {"note": "é"}).read_text(encoding="utf-8")


def test_a_dataset_with_a_file_name_that_is_not_utf8_gets_a_digest_and_a_fingerprint(tmp_path):
    import os

    from deployzoo.data.identity import images_digest

    name = tmp_path / os.fsdecode(b"img\xff.jpg")
    name.write_bytes(b"12345")
    first = images_digest([("1", str(name))])
    assert first == images_digest([("1", str(name))]) and first != images_digest([("1", str(tmp_path / "img.jpg"))])
    store = ResultStore(tmp_path / "run", {"images": [str(name)]})
    assert json.loads((tmp_path / "run" / "run-fingerprint.json").read_bytes())["images"] == [str(name)]
    ResultStore(tmp_path / "run", {"images": [str(name)]}, resume=True)  # the same fingerprint reads back equal
    assert store is not None
