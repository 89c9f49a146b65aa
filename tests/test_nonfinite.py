"""Non-finite engine outputs (NaN, inf) are found per image and output at every place outputs enter the host:
engine runs (eval, predict), vendor dumps, the accuracy guard and compare. Fake engines and dumps, no export."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from deployzoo.cli import main
from deployzoo.data.loader import ImageItem
from deployzoo.data.vendor_bin import write_bin
from deployzoo.nonfinite import NonFiniteOutputError, check_outputs
from deployzoo.pipeline import Engine, evaluate_dataset, predict_files
from deployzoo.precision_guard import run_guard
from deployzoo.registry import get_spec
from deployzoo.verify import compare_engines

REFINEDET = "refinedet320-vgg16-voc"
PRIORS = 6375


def _strict(path: Path) -> dict:
    def refuse(token):
        raise AssertionError(f"{path} holds {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def refinedet_outputs(seed: int) -> dict[str, np.ndarray]:
    """Plausible RefineDet outputs of one image: small offsets, background everywhere but 8 confident priors."""
    rng = np.random.default_rng(seed)
    odm_conf = np.zeros((PRIORS, 21), np.float32)
    odm_conf[:, 0] = 0.99
    odm_conf[:, 1:] = 0.0005
    odm_conf[1000:1008] = 0.0
    odm_conf[1000:1008, 5] = 0.9
    return {"arm_loc": rng.normal(0, 0.1, (PRIORS, 4)).astype(np.float32),
            "arm_conf": np.tile(np.float32([0.2, 0.8]), (PRIORS, 1)),
            "odm_loc": rng.normal(0, 0.1, (PRIORS, 4)).astype(np.float32),
            "odm_conf": odm_conf}


def poison(outputs: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    outputs = {k: v.copy() for k, v in outputs.items()}
    if kind == "nan":
        outputs["odm_loc"][7:10] = np.nan
    elif kind == "inf":
        outputs["odm_conf"][3, 0] = np.inf
    elif kind == "fp16max":  # finite offsets that overflow when decoded: exp(65504 * 0.2) of the confident priors
        outputs["odm_loc"][1000:1008, 2:] = 65504.0
    return outputs


@pytest.fixture(scope="module")
def voc3(tmp_path_factory) -> Path:
    return get_spec(REFINEDET).evaluation.make_synthetic(tmp_path_factory.mktemp("voc3"), num_images=3, seed=1)


def _ids(root: Path) -> list[str]:
    return list(get_spec(REFINEDET).evaluation.open(root).ids)


def _write_dumps(folder: Path, ids: list[str], bad_id: str | None, kind: str) -> Path:
    folder.mkdir()
    for n, image_id in enumerate(ids):
        outputs = refinedet_outputs(n)
        if image_id == bad_id:
            outputs = poison(outputs, kind)
        for k, name in enumerate(get_spec(REFINEDET).output_names):
            write_bin(folder / f"{image_id}_{k}.bin", outputs[name])
    return folder


# --- what is checked -------------------------------------------------------------------------------------------


def test_counts_per_output_and_kind_and_ignores_integers():
    outputs = {"a": np.float32([1, np.nan, np.inf, -np.inf, np.inf]), "b": np.ones(3, np.float32),
               "labels": np.int64([1, 2])}
    (found,) = check_outputs(outputs)
    assert (found.output, found.nan, found.posinf, found.neginf, found.size) == ("a", 1, 2, 1, 5)
    assert "'a' holds 4 non-finite of 5 values (1 NaN, 2 +inf, 1 -inf)" == found.describe()


def test_padding_rows_past_num_dets_are_not_checked():
    spec = get_spec("mmdet-mask-rcnn-r50-fpn-1x")
    boxes = np.zeros((100, 4), np.float32)
    boxes[5:] = np.nan  # padding rows: the host never reads them
    outputs = {"boxes": boxes, "scores": np.zeros(100, np.float32), "labels": np.full(100, -1, np.int64),
               "num_dets": np.int64(5), "masks": np.zeros((100, 28, 28), np.float32)}
    assert check_outputs(outputs, spec.ranked_outputs) == []
    outputs["num_dets"] = np.int64(6)  # now row 5 is a real detection
    (found,) = check_outputs(outputs, spec.ranked_outputs)
    assert found.output == "boxes" and found.nan == 4
    assert check_outputs(outputs, ())[0].nan == 95 * 4  # without the rule, every row is checked


# --- vendor dumps: eval --dumps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, output", [("nan", "'odm_loc' holds 12 non-finite"), ("inf", "'odm_conf' holds 1 "),
                                          ("fp16max", "'post-processed boxes'")])
def test_dumps_with_non_finite_values_stop_naming_image_and_output(tmp_path, voc3, capsys, kind, output):
    ids = _ids(voc3)
    dumps = _write_dumps(tmp_path / "dumps", ids, ids[1], kind)
    out = tmp_path / "out"
    assert main(["eval", REFINEDET, "--data", str(voc3), "--dumps", str(dumps), "--workers", "0", "--batch", "1",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"not finite for image {ids[1]}" in err and output in err and "Traceback" not in err
    assert "--skip-bad" in err and "dump" in err
    assert not (out / "metrics.json").exists()
    # the images before it are kept: a --resume (after fixing the dump) starts after them
    assert len(list((out / "partial").glob("shard-*.npz"))) == 1


def test_dumps_with_skip_bad_skip_and_count_the_image(tmp_path, voc3, capsys):
    ids = _ids(voc3)
    dumps = _write_dumps(tmp_path / "dumps", ids, ids[2], "nan")
    out = tmp_path / "out"
    assert main(["eval", REFINEDET, "--data", str(voc3), "--dumps", str(dumps), "--workers", "0", "--skip-bad",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "not finite" in printed.out and "'odm_loc' on 1 (12 values)" in printed.out
    assert f"skipped {voc3}" in printed.out and f"{ids[2]}.jpg: non-finite" in printed.out  # per-image warning
    metrics = _strict(out / "metrics.json")
    assert metrics["images_evaluated"] == 2
    assert metrics["non_finite_outputs"]["images"] == 1 and metrics["non_finite_outputs"]["image_ids"] == [ids[2]]
    assert metrics["non_finite_outputs"]["by_output"] == {"odm_loc": {"images": 1, "nan": 12, "posinf": 0, "neginf": 0}}
    (entry,) = [s for s in metrics["images_skipped"] if "non_finite" in s]
    assert entry["image_id"] == ids[2] and entry["non_finite"]["odm_loc"]["nan"] == 12
    detections = _strict(out / "detections.json")
    assert {d["image_id"] for d in detections} <= {ids[0], ids[1]}


def test_clean_run_says_every_output_was_checked(tmp_path, voc3):
    ids = _ids(voc3)
    dumps = _write_dumps(tmp_path / "dumps", ids, None, "nan")
    assert main(["eval", REFINEDET, "--data", str(voc3), "--dumps", str(dumps), "--workers", "0",
                 "--out", str(tmp_path / "out")]) == 0
    metrics = _strict(tmp_path / "out" / "metrics.json")
    assert metrics["non_finite_outputs"]["images"] == 0 and metrics["images_evaluated"] == 3


# --- engine runs: eval and predict ---------------------------------------------------------------------------------


def _fake_infer(bad: dict[str, str]):
    """An InferFn that gives plausible outputs, poisoned (``kind``) for the image ids in ``bad``."""
    def infer(feeds, ids):
        batch = feeds["image"].shape[0]
        rows = [poison(refinedet_outputs(0), bad[i]) if i in bad else refinedet_outputs(0) for i in ids]
        rows += [refinedet_outputs(0)] * (batch - len(rows))
        return {name: np.stack([r[name] for r in rows]) for name in rows[0]}

    return infer


def test_engine_run_with_nan_stops_or_skips(tmp_path, voc3):
    spec = get_spec(REFINEDET)
    ids = _ids(voc3)
    with pytest.raises(NonFiniteOutputError, match=f"image {ids[0]} .*'odm_loc' holds 12 non-finite .*12 NaN") as info:
        evaluate_dataset(spec, voc3, _fake_infer({ids[0]: "nan"}), 2, tmp_path / "a", {"model": spec.name},
                         workers=0, progress=False)
    assert info.value.image_id == ids[0] and "--resume" in str(info.value)
    outcome = evaluate_dataset(spec, voc3, _fake_infer({ids[0]: "nan", ids[2]: "inf"}), 2, tmp_path / "b",
                               {"model": spec.name}, workers=0, progress=False, skip_bad=True)
    summary = _strict(tmp_path / "b" / "metrics.json")["non_finite_outputs"]
    assert summary["images"] == 2 and set(summary["by_output"]) == {"odm_loc", "odm_conf"}
    assert outcome.summary["images_evaluated"] == 1


def test_predict_stops_naming_the_image_and_output(tmp_path, voc3):
    spec = get_spec(REFINEDET)
    ids = _ids(voc3)
    paths = [str(spec.evaluation.open(voc3).image_path(i)) for i in ids]
    infer = _fake_infer({ids[1]: "inf"})
    fake = SimpleNamespace(spec=spec, backend=SimpleNamespace(batch_size=1),
                           infer=lambda feeds, names: infer(feeds, [Path(n).stem for n in names]))
    with pytest.raises(NonFiniteOutputError, match=f"{Path(paths[1]).name}.*'odm_conf'") as info:
        predict_files(fake, paths)
    assert "--resume" not in str(info.value)  # predict keeps nothing to resume


def test_segmentation_nan_logits_are_not_argmaxed(tmp_path):
    """NaN logits would argmax to some class without a word."""
    spec = get_spec("mmseg-pspnet-r50-d8-voc12aug")
    root = spec.evaluation.make_synthetic(tmp_path / "seg", num_images=1)
    image = str(spec.evaluation.open(root).image_path(spec.evaluation.open(root).ids[0]))

    def infer(feeds, ids):
        b, _, h, w = feeds["image"].shape
        logits = np.zeros((b, 21, h, w), np.float32)
        logits[:, 3, :10, :10] = np.nan
        return {"seg_logits": logits}

    fake = SimpleNamespace(spec=spec, backend=SimpleNamespace(batch_size=1), infer=infer)
    with pytest.raises(NonFiniteOutputError, match="'seg_logits' holds 100 non-finite"):
        predict_files(fake, [image], out_dir=tmp_path / "out")


# --- the accuracy guard --------------------------------------------------------------------------------------------


class _FakeBackend:
    def __init__(self, precision: str, infer):
        self.name, self.precision, self.batch_size, self._infer = "fake", precision, 1, infer

    def infer(self, feeds):
        return self._infer(feeds, ["?"])

    def describe(self):
        return {"backend": self.name, "precision": self.precision}

    def close(self):
        pass


def test_guard_fails_a_candidate_whose_boxes_overflow(tmp_path, voc3):
    spec = get_spec(REFINEDET)
    ids = _ids(voc3)

    def engine(precision: str) -> Engine:
        clean = _fake_infer({})
        broken = _fake_infer({i: "fp16max" for i in ids})
        infer = clean if precision == "fp32" else broken
        return Engine(spec, _FakeBackend(precision, lambda feeds, _: infer(feeds, ids[:1])), None, None, "fake")

    result = run_guard(spec, engine, "fp16", voc3, tmp_path / "guard", num_images=3)
    assert not result.holds
    text = result.describe()
    assert "FAILS" in text and "fp16 gives non-finite outputs" in text and "'post-processed boxes'" in text
    assert f"image {ids[0]}" in text
    as_dict = result.to_dict()
    assert as_dict["holds"] is False and as_dict["non_finite"]["precision"] == "fp16"
    assert "post-processed boxes" in as_dict["non_finite"]["outputs"]
    json.dumps(as_dict, allow_nan=False)


def test_guard_fails_when_candidate_returns_inf(tmp_path, voc3):
    spec = get_spec(REFINEDET)

    def engine(precision: str) -> Engine:
        infer = _fake_infer({}) if precision == "fp32" else _fake_infer({"?": "inf"})
        return Engine(spec, _FakeBackend(precision, lambda feeds, _: infer(feeds, ["?"])), None, None, "fake")

    result = run_guard(spec, engine, "fp16", voc3, tmp_path / "guard", num_images=2)
    assert not result.holds and "'odm_conf' holds 1 non-finite" in result.describe()


# --- compare -------------------------------------------------------------------------------------------------------


def test_compare_fails_naming_non_finite_outputs(tmp_path, voc3):
    spec = get_spec(REFINEDET)
    ids = _ids(voc3)
    dataset = spec.evaluation.open(voc3)
    items = [ImageItem(i, str(dataset.image_path(i))) for i in ids]
    reference = Engine(spec, _FakeBackend("fp32", lambda feeds, _: _fake_infer({})(feeds, ["x"])), None, None, "fake")
    calls = iter(ids)

    def broken(feeds, _):
        return _fake_infer({ids[1]: "nan"})(feeds, [next(calls)])

    engine = Engine(spec, _FakeBackend("fp16", broken), None, None, "fake")
    agreement = compare_engines(engine, reference, items)
    assert not agreement.ok
    (entry,) = agreement.non_finite
    assert entry["image_id"] == ids[1] and entry["side"] == "engine" and entry["outputs"]["odm_loc"]["nan"] == 12
    assert agreement.to_dict()["verdict"] == "FAIL"
    assert f"engine, image {ids[1]}" in agreement.table()
    assert all(d.ok for d in agreement.outputs)  # the other images agree exactly, and no NaN reaches the figures
    json.dumps(agreement.to_dict(), allow_nan=False)


def test_dumps_of_the_wrong_size_stop_before_any_image_is_read(tmp_path, voc3, capsys):
    """A dump of another model or shape is found by its byte count before the first image, naming the files."""
    ids = _ids(voc3)
    dumps = _write_dumps(tmp_path / "dumps", ids, None, "nan")
    last = dumps / f"{ids[-1]}_1.bin"
    last.write_bytes(last.read_bytes()[:-4])
    out = tmp_path / "out"
    assert main(["eval", REFINEDET, "--data", str(voc3), "--dumps", str(dumps), "--workers", "0", "--batch", "1",
                 "--skip-bad", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{ids[-1]}_1.bin has" in err and "wrong size" in err and str(dumps) in err and "Traceback" not in err
    assert not (out / "partial").exists() or not list((out / "partial").glob("shard-*.npz"))  # nothing run
