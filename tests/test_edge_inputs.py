"""Bad input found by trying the product as a new user (issue 14 follow-up): each kind gets one clear error
naming the file and the problem before the expensive part, never a silently wrong figure."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from coco_json import edit_coco_json
from pycocotools import mask as mask_utils

from deployzoo.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES, COCODetection
from deployzoo.data.synthetic_coco import make_synthetic_coco
from deployzoo.errors import BadInputError
from deployzoo.tasks.coco_detection import COCODetectionTask

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def coco2(tmp_path) -> Path:
    return make_synthetic_coco(tmp_path / "coco", num_images=2, seed=0)


def _first_with_rle(data: dict) -> dict:
    return next(a for a in data["annotations"] if isinstance(a.get("segmentation"), dict))


# ---------------------------------------------------------------- COCO ground-truth masks


def test_gt_rle_of_another_size_would_score_a_perfect_mask_as_missed(coco2):
    """Why the check exists: pycocotools' IoU of differently sized masks is -1, so a detection equal to the
    ground truth is not matched (mask AP drops without a word)."""
    a = mask_utils.encode(np.asfortranarray(np.ones((20, 30), np.uint8)))
    b = mask_utils.encode(np.asfortranarray(np.ones((30, 20), np.uint8)))
    assert mask_utils.iou([a], [b], [0])[0, 0] == -1


def test_gt_rle_whose_size_is_not_the_images_is_refused_naming_the_annotation(coco2):
    def change(data):
        ann = _first_with_rle(data)
        ann["segmentation"]["size"] = [100, 100]

    edit_coco_json(coco2, change)
    task = COCODetectionTask()
    with pytest.raises(BadInputError, match=r"instances_val2017\.json.*annotation id \d+ of image \d+: RLE "
                                            r"segmentation 'size' \[100, 100\].*not the size \[\d+, \d+\] of "
                                            r".*\.jpg"):
        task.validate(coco2)
    checked = task.validate(coco2, skip_bad=True)  # a per-image problem: --skip-bad leaves that image out
    assert len(checked.skipped) == 1 and "RLE segmentation 'size' [100, 100]" in checked.skipped[0]["problem"]


def test_data_to_bin_refuses_a_wrongly_sized_gt_mask_before_writing(coco2, tmp_path, capsys):
    from deployzoo.cli import main

    edit_coco_json(coco2, lambda data: _first_with_rle(data)["segmentation"].update(size=[7, 9]))
    assert main(["data", "to-bin", "mmdet-mask-rcnn-r50-fpn-1x", "--data", str(coco2), "--out",
                 str(tmp_path / "bins")]) == 2
    assert "RLE segmentation 'size' [7, 9]" in capsys.readouterr().err
    assert not (tmp_path / "bins").exists()


@pytest.mark.parametrize("polygons, words", [([], "is an empty list of polygons"), ([[1.0, 2.0, 3.0]], "polygon 0 has 3")])
def test_gt_polygons_pycocotools_cannot_read_are_refused_up_front(coco2, polygons, words):
    def change(data):
        data["annotations"][0]["segmentation"] = polygons

    edit_coco_json(coco2, change)
    with pytest.raises(BadInputError, match=r"annotations\[0\] \(id \d+\): segmentation " + words):
        COCODetection(coco2)
    # what scoring would have met after the whole run
    with pytest.raises((IndexError, Exception)):
        mask_utils.frPyObjects(polygons, 10, 10)


def test_gt_polygons_pycocotools_reads_are_kept(coco2):
    def change(data):
        data["annotations"][0]["segmentation"] = [[1.0, 1.0, 9.0, 1.0, 9.0, 9.0], [2.0, 2.0]]  # a 1-point tail
        data["annotations"][1]["segmentation"] = [[1.0, 1.0, 5.0, 5.0]]  # read as a box, as COCOeval does

    edit_coco_json(coco2, change)
    dataset = COCODetection(coco2)
    assert len(dataset) == 2 and len(COCO_CLASSES) == len(COCO_CATEGORY_IDS)


# ---------------------------------------------------------------- numeric options out of range

REFINEDET = "refinedet320-vgg16-voc"
_OUT_OF_RANGE = [
    (["predict", REFINEDET, "--out", "o", "x.png"], "--max-dets", "-1"),
    (["predict", REFINEDET, "--out", "o", "x.png"], "--max-dets", "0"),
    (["predict", REFINEDET, "--out", "o", "x.png"], "--score-thr", "nan"),
    (["predict", REFINEDET, "--out", "o", "x.png"], "--draw-thr", "inf"),
    (["predict", REFINEDET, "--out", "o", "x.png"], "--threads", "-3"),
    (["eval", REFINEDET, "--data", "d"], "--workers", "-1"),
    (["eval", REFINEDET, "--data", "d"], "--pictures", "-1"),
    (["eval", REFINEDET, "--data", "d"], "--guard-images", "0"),
    (["eval", REFINEDET, "--data", "d"], "--guard-tolerance", "nan"),
    (["eval", REFINEDET, "--data", "d"], "--calibration-images", "0"),
    (["data", "to-bin", REFINEDET, "--out", "b", "x.png"], "--workers", "-2"),
    (["data", "synthetic", REFINEDET, "--out", "s"], "--num-images", "0"),
    (["bench", REFINEDET], "--iters", "0"),
    (["bench", REFINEDET], "--warmup", "-1"),
    (["bench", REFINEDET], "--min-seconds", "-1"),
    (["bench", REFINEDET], "--repeats", "0"),
    (["matrix", "--out", "m"], "--iters", "0"),
    (["matrix", "--out", "m"], "--cell-timeout", "0"),
    (["run", REFINEDET, "--out", "r"], "--workers", "-1"),
    (["run", REFINEDET, "--out", "r"], "--min-seconds", "nan"),
    (["run", REFINEDET, "--out", "r"], "--num-images", "0"),
    (["predict", REFINEDET, "--out", "o", "x.png"], "--draw-thr", "1.5"),
    (["predict", REFINEDET, "--out", "o", "x.png"], "--score-thr", "-0.1"),
    (["bench", REFINEDET, "--e2e"], "--num-images", "0"),
    (["compare", REFINEDET], "--num-images", "-1"),
    (["eval", REFINEDET, "--data", "d"], "--limit", "0"),
    (["eval", REFINEDET, "--data", "d"], "--replicas", "0"),
    (["data", "to-bin", REFINEDET, "--out", "b", "--data", "d"], "--limit", "0"),
    (["data", "synthetic", REFINEDET, "--out", "s"], "--seed", "-1"),
    # huge counts would fill the disk with generated images or start processes and threads without end
    (["bench", REFINEDET, "--e2e"], "--num-images", "99999999999"),
    (["bench", REFINEDET], "--guard-images", "99999999999"),
    (["eval", REFINEDET, "--data", "d"], "--calibration-images", "200000"),
    (["run", REFINEDET, "--out", "r"], "--workers", "99999"),
    (["bench", REFINEDET], "--threads", "99999999999"),
    (["bench", REFINEDET], "--batch", "99999999999"),  # was a MemoryError traceback
    (["eval", REFINEDET, "--data", "d"], "--batch", "5000"),
    (["bench", REFINEDET], "--guard-tolerance", "1000"),  # a drop of 1000 points passes every guard: off in silence
    (["matrix", "--out", "m"], "--guard-tolerance", "101"),
]


@pytest.mark.parametrize("command, option, value", _OUT_OF_RANGE,
                         ids=[f"{c[0]}{c[1] if c[0] == 'data' else ''}{o}={v}" for c, o, v in _OUT_OF_RANGE])
def test_numeric_option_out_of_range_is_refused_by_the_parser(command, option, value, capsys):
    from deployzoo.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*command, option, value])
    assert exc.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}:" in error and value in error, error


def test_in_range_values_still_parse():
    from deployzoo.option_types import finite_number, whole_number

    assert whole_number(0, "threads")("0") == 0 and whole_number(1, "images")("7") == 7
    assert finite_number("--score-thr")("-0.5") == -0.5 and finite_number("--min-seconds", 0)("0") == 0.0
    assert finite_number("--draw-thr", 0.0, 1.0)("1") == 1.0


def test_detections_top_refuses_a_negative_count_and_a_nan_threshold():
    from deployzoo.structures import Detections

    dets = Detections(np.zeros((3, 4), np.float32), np.array([0.9, 0.5, 0.7], np.float32), np.zeros(3, np.int64))
    assert len(dets.top(2)) == 2 and len(dets.top(0)) == 0 and len(dets.top(None)) == 3
    with pytest.raises(ValueError, match="max_dets must be at least 0"):
        dets.top(-1)
    with pytest.raises(ValueError, match="NaN"):
        dets.top(None, float("nan"))


# ---------------------------------------------------------------- weights holding NaN / inf


@pytest.fixture
def nan_checkpoint(refinedet_checkpoint, tmp_path) -> Path:
    import torch

    weights = torch.load(refinedet_checkpoint, weights_only=True)
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key] = weights[key].clone()
    weights[key].view(-1)[:2] = torch.tensor([float("nan"), float("inf")])
    path = tmp_path / "diverged.pth"
    torch.save(weights, path)
    return path


def test_a_checkpoint_holding_nan_is_refused_at_load_naming_the_tensor(nan_checkpoint, refinedet_spec):
    from deployzoo.engine import load_model
    from deployzoo.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"diverged\.pth: 1 weight tensor\(s\) hold NaN or infinity.*"
                                              r"vgg\.0\.weight \(1 NaN, 1 inf of \d+\)"):
        load_model(refinedet_spec, nan_checkpoint)


def test_predict_with_a_nan_checkpoint_stops_before_export(nan_checkpoint, tmp_path, monkeypatch, capsys):
    import cv2

    import deployzoo.cache
    from deployzoo.cli import main

    def boom(*args, **kwargs):
        raise AssertionError("exported before the weights were checked")

    monkeypatch.setattr(deployzoo.cache, "cached_onnx", boom)
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.full((40, 50, 3), 90, np.uint8))
    assert main(["predict", REFINEDET, "--checkpoint", str(nan_checkpoint), "--out", str(tmp_path / "o"),
                 str(image)]) == 2
    err = capsys.readouterr().err
    assert "hold NaN or infinity" in err and "Traceback" not in err and "could not be decoded" not in err
    assert not (tmp_path / "o" / "predictions.json").exists()


# ---------------------------------------------------------------- images cut short; compare checks first


def _png(path: Path, cut: int | None = None) -> Path:
    import cv2

    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    if cut is not None:
        path.write_bytes(path.read_bytes()[:cut])
    return path


@pytest.mark.parametrize("cut", [40, 2000])  # inside the header chunks; inside the image data
def test_a_png_cut_short_is_found_by_the_header_check(tmp_path, cut):
    from deployzoo.data.checks import image_header_hw

    whole = _png(tmp_path / "whole.png")
    assert image_header_hw(whole) == (60, 80)
    whole.write_bytes(whole.read_bytes() + b"trailing bytes")  # data after IEND is not truncation
    assert image_header_hw(whole) == (60, 80)
    with pytest.raises(BadInputError, match=r"cut\.png: (truncated PNG|not a decodable image)"):
        image_header_hw(_png(tmp_path / "cut.png", cut=cut))


@pytest.mark.parametrize("images", [["cut"], ["good", "good"]])
def test_compare_checks_its_images_before_the_model(tmp_path, monkeypatch, capsys, images):
    import deployzoo.engine
    from deployzoo.cli import main

    def boom(*args, **kwargs):
        raise AssertionError("the model was built before the images were checked")

    monkeypatch.setattr(deployzoo.engine, "load_model", boom)
    files = {"cut": _png(tmp_path / "cut.png", cut=2000), "good": _png(tmp_path / "good.png")}
    assert main(["compare", REFINEDET, "--out", str(tmp_path / "o"), "--images",
                 *[str(files[name]) for name in images]]) == 2
    err = capsys.readouterr().err
    assert ("truncated PNG" in err or "given twice" in err) and "--skip-bad" not in err  # compare has none


def test_to_bin_does_not_offer_a_skip_bad_it_does_not_have(tmp_path, capsys):
    from deployzoo.cli import main

    assert main(["data", "to-bin", REFINEDET, "--out", str(tmp_path / "b"), str(_png(tmp_path / "c.png", 2000))]) == 2
    err = capsys.readouterr().err
    assert "c.png: truncated PNG" in err and "--skip-bad" not in err


# ---------------------------------------------------------------- an undefined headline is never printed as nan


def test_headline_text_says_why_a_figure_is_undefined():
    from deployzoo.figures import headline_text

    assert headline_text(41.234, "COCO box AP") == "41.23"
    for value in (float("nan"), None, float("inf")):
        text = headline_text(value, "COCO box AP")
        assert text.startswith("n/a (COCO box AP is undefined") and "nan" not in text.lower().replace("n/a", "")


def test_scoring_a_coco_split_without_ground_truth_prints_no_nan(coco2, tmp_path, capsys):
    import json

    from deployzoo.cli import main

    edit_coco_json(coco2, lambda data: data.update(annotations=[]))
    predictions = tmp_path / "predictions.json"
    predictions.write_text("[]")
    assert main(["score", "--data", str(coco2), "--predictions", str(predictions), "--out", str(tmp_path / "s")]) == 0
    headline = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("COCO box AP"))
    assert "n/a (COCO box AP is undefined on these images: there is no ground truth" in headline
    assert " nan" not in headline
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["headline"]["value"] is None and "no ground truth" in metrics["null_values"]["headline.value"]


def test_run_report_accuracy_section_shows_an_undefined_figure_as_n_a():
    from deployzoo.run_report import accuracy_section

    acc = {"metric": "COCO box AP", "protocol": "standard", "value": float("nan"), "published": 38.2,
           "published_source": "mmdet"}
    lines = accuracy_section(None, acc, 2, "images", stand_in=False, synthetic=False, metrics_table="|-|",
                             protocol_reference=None)
    assert "COCO box AP = n/a (COCO box AP is undefined" in lines[2] and "nan" not in lines[2]


# ---------------------------------------------------------------- --resume on other image files


def test_resume_refuses_results_computed_on_other_image_files(tmp_path, capsys):
    import shutil

    import cv2
    from test_nonfinite import _write_dumps

    from deployzoo.cli import main
    from deployzoo.registry import get_spec

    task = get_spec(REFINEDET).evaluation
    first = task.make_synthetic(tmp_path / "a", num_images=2, seed=3)
    other = Path(shutil.copytree(first, tmp_path / "b" / first.name))  # same ids and annotations
    ids = list(task.open(first).ids)
    picture = task.open(other).image_path(ids[0])
    cv2.imwrite(str(picture), cv2.imread(str(picture))[::-1], [cv2.IMWRITE_JPEG_QUALITY, 70])  # another picture
    dumps = _write_dumps(tmp_path / "dumps", ids, None, "")
    out = tmp_path / "out"
    command = ["eval", REFINEDET, "--dumps", str(dumps), "--workers", "0", "--pictures", "0", "--out", str(out)]
    assert main([*command, "--data", str(first)]) == 0
    capsys.readouterr()
    assert main([*command, "--data", str(other), "--resume"]) == 2
    assert "cannot resume, the earlier run used different settings (image_files)" in capsys.readouterr().err
    assert main([*command, "--data", str(first), "--resume"]) == 0  # the same files resume as before
    assert "resumed: 2 images taken from the interrupted run" in capsys.readouterr().out


# ---------------------------------------------------------------- bench: batch sizes a fixed-batch file cannot take


def test_bench_refuses_batch_sizes_a_fixed_batch_onnx_cannot_take_before_timing(tmp_path, monkeypatch, capsys):
    from test_model_files import REFINEDET_OUTPUTS, tiny_onnx

    import deployzoo.bench.pure
    from deployzoo.cli import main
    from deployzoo.onnx_batch import fixed_batch

    def boom(*args, **kwargs):
        raise AssertionError("timing started before the batch sizes were checked")

    monkeypatch.setattr(deployzoo.bench.pure, "bench_sweep", boom)
    model = tiny_onnx(tmp_path / "b1.onnx", REFINEDET_OUTPUTS, {"image": (3, 320, 320)},
                      {"deployzoo.model": REFINEDET, "deployzoo.weights": "RefineDet320_VOC_final.pth"})
    assert fixed_batch(model) == 1
    assert main(["bench", str(model), "--batch", "1,4,8", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "b1.onnx: its input is fixed to batch 1, but --batch asks for 4, 8" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- matrix: the guard's dataset checked before any cell


def test_matrix_checks_the_guard_dataset_before_any_cell(tmp_path, capsys):
    import re

    from deployzoo.cli import main
    from deployzoo.registry import get_spec

    root = get_spec(REFINEDET).evaluation.make_synthetic(tmp_path / "voc", num_images=2, seed=4)
    xml = next((root / "VOC2007" / "Annotations").glob("*.xml"))
    xml.write_text(re.sub(r"<xmax>\d+</xmax>", "<xmax>0</xmax>", xml.read_text(), count=1))
    out = tmp_path / "m"
    assert main(["matrix", "--models", REFINEDET, "--backends", "onnxruntime", "--precisions", "fp32,fp16",
                 "--batch", "1", "--data", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{xml.name}: object[0]" in err and "negative width or height" in err
    assert not (out / "cells").exists()


# ---------------------------------------------------------------- COCO impossible boxes: one rule with VOC


@pytest.mark.parametrize("bbox, words", [([5.0, 5.0, -3.0, 4.0], "negative width or height"),
                                         ([900.0, 5.0, 10.0, 10.0], "lies outside")])
def test_coco_impossible_box_is_refused_or_skipped_per_image_as_voc_does(coco2, bbox, words):
    edit_coco_json(coco2, lambda data: data["annotations"][0].update(bbox=bbox))
    task = COCODetectionTask()
    with pytest.raises(BadInputError, match=rf"annotations\[0\] \(id \d+\).*{words}"):
        task.validate(coco2)
    checked = task.validate(coco2, skip_bad=True)
    assert len(checked.skipped) == 1 and words in checked.skipped[0]["problem"] and len(checked.ids) == 1
    with pytest.raises(BadInputError, match=words):  # the reader alone still refuses the file
        COCODetection(coco2)


# bench's two modes: an option of the other mode was ignored without a word (``bench --backends pytorch`` timed
# ONNX Runtime; ``bench --e2e --batch 4`` timed batch 1).
_WRONG_MODE = [
    (["--e2e", "--backend", "openvino"], "--backend belongs to the pure-inference benchmark"),
    (["--e2e", "--batch=4", "--precision", "fp16"], "--batch, --precision belong to the pure-inference benchmark"),
    (["--e2e", "--no-native"], "--no-native belongs"),
    (["--e2e", "--guard-tol", "1"], "--guard-tolerance belongs"),  # an abbreviation counts as argparse reads it
    (["--backends", "pytorch"], "--backends applies to --e2e only"),
    (["--num-images", "3", "--repeats", "2"], "--num-images, --repeats apply to --e2e only"),
    (["--images", "a.jpg"], "--images applies to --e2e only"),
]


@pytest.mark.parametrize("options, message", _WRONG_MODE, ids=[" ".join(o) for o, _ in _WRONG_MODE])
def test_bench_refuses_an_option_of_the_other_mode_before_any_work(options, message, monkeypatch, capsys):
    import deployzoo.engine
    from deployzoo.cli import main

    monkeypatch.setattr(deployzoo.engine, "load_model", _no_model)
    assert main(["bench", REFINEDET, *options]) == 2
    assert message in capsys.readouterr().err


def _no_model(*args, **kwargs):
    raise AssertionError("a model was built before the options were checked")


@pytest.mark.parametrize("options, message", [
    (["--backends", ""], "--backends names nothing"),
    (["--backends", " , "], "--backends names nothing"),
    (["--backends", "pytorch,openvino,pytorch"], "--backends names pytorch more than once"),
    (["--backends", "tensorrt"], "unknown backend 'tensorrt' in --backends"),
    (["--precisions", "fp8"], "unknown precision 'fp8' in --precisions"),
    (["--precisions", "fp32,,fp32"], "--precisions names fp32 more than once"),
])
def test_bench_e2e_checks_its_lists_before_any_work(options, message, monkeypatch, capsys, tmp_path):
    import deployzoo.engine
    from deployzoo.cli import main

    monkeypatch.setattr(deployzoo.engine, "load_model", _no_model)
    assert main(["bench", REFINEDET, "--e2e", "--out", str(tmp_path / "o"), *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # no generated images either


def test_bench_e2e_checks_its_images_before_the_model(tmp_path, monkeypatch, capsys):
    import deployzoo.engine
    from deployzoo.cli import main

    monkeypatch.setattr(deployzoo.engine, "load_model", _no_model)
    good = _png(tmp_path / "good.png")
    assert main(["bench", REFINEDET, "--e2e", "--out", str(tmp_path / "o"), "--images", str(good),
                 str(_png(tmp_path / "cut.png", cut=2000))]) == 2
    assert "cut.png" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--backends", ""], "--backends names nothing"),
    (["--backends", "onnxruntime,onnxruntime"], "--backends names onnxruntime more than once"),
    (["--precisions", ","], "--precisions names nothing"),
    (["--models", ","], "--models names nothing"),
    (["--models", f"{REFINEDET},{REFINEDET}"], f"--models names {REFINEDET} more than once"),
    (["--models", f"all,{REFINEDET}"], "--models 'all' stands alone"),
])
def test_matrix_refuses_empty_and_repeated_lists(options, message, tmp_path, capsys):
    from deployzoo.cli import main

    out = tmp_path / "m"
    args = ["matrix", "--out", str(out), *options]
    if "--models" not in options:
        args += ["--models", REFINEDET]
    assert main(args) == 2  # before: zero cells, exit 0 (or each cell run twice)
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_steady_rate_basis_counts_one_batch_in_the_singular():
    from deployzoo.bench.e2e_ratio import _batches

    assert _batches(1) == "1 batch" and _batches(3) == "3 batches"



@pytest.mark.parametrize("options, message", [
    (["--e2e", "--images", "a.jpg", "--num-images", "2"], "--num-images sets how many images are generated"),
    (["--e2e", "--device", "bogus"], "--device 'bogus' is not a device"),
    (["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else ["--device", "bogus"],
     "device '"),
])
def test_bench_refuses_combinations_that_did_nothing(options, message, monkeypatch, capsys):
    import deployzoo.engine
    from deployzoo.cli import main

    monkeypatch.setattr(deployzoo.engine, "load_model", _no_model)
    assert main(["bench", REFINEDET, *options]) == 2
    assert message in capsys.readouterr().err


def test_bench_e2e_takes_a_registry_name_not_an_onnx_file(tmp_path, capsys):
    from deployzoo.cli import main

    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really")
    assert main(["bench", str(model), "--e2e"]) == 2
    assert "bench --e2e times the whole chain from a registry model" in capsys.readouterr().err


def test_a_repeated_batch_size_is_refused(capsys):
    from deployzoo.cli import main

    with pytest.raises(SystemExit):
        main(["bench", REFINEDET, "--batch", "1,4,1"])
    assert "batch size 1 given more than once" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_openvino_precision_the_cpu_lacks_is_refused_before_export_and_guard_data(precision, tmp_path, monkeypatch,
                                                                                 capsys):
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    import deployzoo.backends.openvino_backend as ov_backend
    import deployzoo.engine
    from deployzoo.cli import main

    monkeypatch.setattr(ov_backend, "precision_refusal", lambda p, caps=None: "this CPU has no native it (test)")
    monkeypatch.setattr(deployzoo.engine, "load_model", _no_model)
    image = _png(tmp_path / "a.png")
    out = tmp_path / "p"
    assert main(["predict", REFINEDET, "--backend", "openvino", "--precision", precision, "--out", str(out),
                 str(image)]) == 2
    assert f"openvino cannot run {precision}" in capsys.readouterr().err
    assert not (out / "guard-data").exists()


def _no_export(*args, **kwargs):
    raise AssertionError("an ONNX file was exported before the precision was checked")


@pytest.mark.parametrize("command", ["predict", "eval", "compare", "bench"])
@pytest.mark.parametrize("backend, precision", [("onnxruntime", "bf16"), ("onnxruntime", "int8"),
                                                ("pytorch", "int8"), ("openvino", "bf16")])
def test_a_precision_the_backend_cannot_run_is_refused_before_any_work(command, backend, precision, tmp_path,
                                                                       monkeypatch, capsys):
    """Every command with --precision refuses it first: no model built, no export (bench exported every --batch
    before), no guard data generated."""
    import deployzoo.cache
    import deployzoo.engine
    from deployzoo.cli import main

    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed")
        import deployzoo.backends.openvino_backend as ov_backend

        monkeypatch.setattr(ov_backend, "precision_refusal", lambda p, caps=None: "this CPU has no native it (test)")
    monkeypatch.setattr(deployzoo.engine, "load_model", _no_model)
    monkeypatch.setattr(deployzoo.cache, "cached_onnx", _no_export)
    out = tmp_path / "o"
    args = {"predict": ["predict", REFINEDET, str(_png(tmp_path / "a.png"))],
            "eval": ["eval", REFINEDET, "--data", str(tmp_path / "no-such-data")],
            "compare": ["compare", REFINEDET],
            "bench": ["bench", REFINEDET, "--batch", "2,4"]}[command]
    assert main([*args, "--backend", backend, "--precision", precision, "--out", str(out)]) == 2
    assert f"{backend} cannot run {precision}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", ["bench", "predict", "eval", "compare"])
def test_below_fp32_a_user_file_fixed_to_another_batch_is_refused_before_the_guard(command, tmp_path, monkeypatch,
                                                                                   capsys):
    """The guard runs the file at batch 1: a file fixed to batch 2 is named now, not by the guard's engine after
    its data was generated (with a message about a batch 1 the user never asked for)."""
    import deployzoo.cli
    import deployzoo.engine
    from deployzoo.cli import main

    fixed = tmp_path / "b2.onnx"
    fixed.write_bytes(b"stand-in")
    monkeypatch.setattr(deployzoo.cli, "_checked_onnx", lambda path, spec, command, backend=None: spec)
    monkeypatch.setattr(deployzoo.engine, "load_model", _no_model)
    monkeypatch.setattr("deployzoo.onnx_batch.fixed_batch", lambda path: 2)
    out = tmp_path / "o"
    args = {"predict": ["predict", REFINEDET, str(_png(tmp_path / "a.png")), str(_png(tmp_path / "b.png"))],
            "eval": ["eval", REFINEDET, "--data", str(tmp_path / "no-such-data")],
            "compare": ["compare", REFINEDET],
            "bench": ["bench", REFINEDET]}[command]
    if command == "eval":  # its dataset is checked first: give it one (not read further)
        monkeypatch.setattr(deployzoo.cli, "_check_data", lambda *a, **k: None)
    assert main([*args, "--onnx", str(fixed), "--backend", "openvino", "--precision", "int8", "--batch", "2",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "b2.onnx" in err and "fixed to batch 2" in err and "accuracy guard" in err
    assert not (out / "guard-data").exists()


@pytest.mark.parametrize("batches, expected", [("2", None), ("1,4", "b1.onnx"), ("4,1", "b1.onnx")])
def test_bench_below_fp32_guards_the_batch_1_export(batches, expected, tmp_path, monkeypatch):
    """bench --batch 2 --precision int8 handed the guard (which runs at batch 1) the batch-2 export, which it could
    not open; now it gets the batch-1 file, or none and exports it itself."""
    from types import SimpleNamespace

    import deployzoo.cache
    import deployzoo.cli
    import deployzoo.engine
    from deployzoo.cli import main

    seen = {}

    class _Stop(Exception):
        pass

    def resolve(args, spec, backend, out, loaded=None, onnx=None, data=None):
        seen["onnx"] = onnx
        raise _Stop

    monkeypatch.setattr(deployzoo.engine, "load_model", lambda spec, checkpoint: SimpleNamespace(model=None))
    monkeypatch.setattr(deployzoo.cache, "cached_onnx",
                        lambda loaded, batch_size=1, **kw: SimpleNamespace(path=tmp_path / f"b{batch_size}.onnx"))
    monkeypatch.setattr(deployzoo.cli, "_resolve_precision", resolve)
    with pytest.raises(_Stop):
        main(["bench", REFINEDET, "--backend", "openvino", "--precision", "int8", "--batch", batches,
              "--out", str(tmp_path / "o")])
    assert (seen["onnx"] is None) if expected is None else (seen["onnx"].name == expected)
