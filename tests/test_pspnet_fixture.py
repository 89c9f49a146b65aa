"""PSPNet against mmsegmentation 1.2.2's own outputs on the fixture weights (tests/fixtures/mmseg-pspnet-r50-d8-voc12aug)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from deployzoo.compare import tensor_diff
from deployzoo.data.voc_seg import VOC_SEG_CLASSES, read_label_png
from deployzoo.models.pspnet import logits_at_original

pytestmark = pytest.mark.slow

WINDOWS = {"seg_logits_orig_win_tl": (slice(0, 64), slice(0, 64)),
           "seg_logits_orig_win_c": (slice(208, 272), slice(288, 352)),
           "seg_logits_orig_win_br": (slice(416, 480), slice(576, 640))}
TIE = 1e-5  # the fixture rule: labels may differ only where the top two logits are this close


@pytest.fixture(scope="module")
def prepared(pspnet_spec, pspnet_case):
    bgr = cv2.imread(str(pspnet_case["image"]), cv2.IMREAD_COLOR)
    array, meta = pspnet_spec.preprocess(bgr)
    return array, meta, pspnet_spec.make_feeds([array], [meta], 1)


def test_preprocessing_is_bit_identical(prepared, pspnet_case):
    array, meta, feeds = prepared
    assert list(meta.resized_hw) == pspnet_case["json"]["preprocessing"]["resized_hw"]
    bgr = pspnet_case["arrays"]["input_bgr_chw"].astype(np.float32)[::-1]
    mean = np.asarray([123.675, 116.28, 103.53], np.float32).reshape(3, 1, 1)
    std = np.asarray([58.395, 57.12, 57.375], np.float32).reshape(3, 1, 1)
    assert np.array_equal(array, (bgr - mean) / std)
    assert feeds["image"].shape == (1, 3, 512, 683)  # no padding


def test_checkpoint_loads_strictly_and_ignores_the_auxiliary_head(pspnet_loaded):
    report = pspnet_loaded.mapping_report
    assert report.counts["copied"] == 362 and report.counts["ignored"] == 8, report.counts
    assert "auxiliary" in report.format(verbose=True)


def _labels_match(labels, case):
    a = case["arrays"]
    differs = labels != a["label_map"]
    assert labels.shape == a["label_map"].shape
    assert (a["seg_logits_orig_top2_margin"][differs] < TIE).all(), int(differs.sum())
    return int(differs.sum())


def test_pytorch_decode_logits_and_final_logits(pspnet_loaded, prepared, pspnet_case):
    array, meta, feeds = prepared
    a = pspnet_case["arrays"]
    with torch.inference_mode():
        image = torch.from_numpy(feeds["image"])
        decode = pspnet_loaded.model.decode_logits(image)[0].numpy()
        (seg_logits,) = pspnet_loaded.model(image)
    assert tensor_diff("decode", decode, a["decode_logits"]).ok
    full = logits_at_original(seg_logits[0].numpy(), meta).numpy()
    for name, (rows, cols) in WINDOWS.items():
        assert tensor_diff(name, full[:, rows, cols], a[name]).ok, name
    assert tensor_diff("max", full.max(0), a["seg_logits_orig_max"]).ok


def test_onnxruntime_logits_at_the_original_size(pspnet_spec, pspnet_onnx, prepared, pspnet_case):
    from deployzoo.engine import make_backend

    array, meta, feeds = prepared
    backend = make_backend("onnxruntime", pspnet_spec, 1, onnx_path=pspnet_onnx)
    full = logits_at_original(backend.infer(feeds)["seg_logits"][0], meta).numpy()
    a = pspnet_case["arrays"]
    for name, (rows, cols) in WINDOWS.items():
        assert tensor_diff(name, full[:, rows, cols], a[name]).ok, name
    assert tensor_diff("max", full.max(0), a["seg_logits_orig_max"]).ok


@pytest.mark.parametrize("backend", ["onnxruntime", "pytorch"])
def test_predict_reproduces_the_reference_label_map(backend, tmp_path, pspnet_checkpoint, pspnet_onnx, pspnet_case):
    from deployzoo.cli import main

    args = ["predict", "mmseg-pspnet-r50-d8-voc12aug", str(pspnet_case["image"]), "--backend", backend,
            "--checkpoint", str(pspnet_checkpoint), "--out", str(tmp_path)]
    if backend == "onnxruntime":
        args += ["--onnx", str(pspnet_onnx)]
    assert main(args) == 0
    (record,) = json.loads((tmp_path / "predictions.json").read_text())
    assert record["label_map"] == "label_maps/case-1.png" and (record["height"], record["width"]) == (480, 640)
    labels = read_label_png(tmp_path / record["label_map"])
    _labels_match(labels, pspnet_case)
    hist = pspnet_case["json"]["results_summary"]["label_hist"]
    for name, count in record["pixels"].items():
        assert abs(count - hist[VOC_SEG_CLASSES.index(name)]) <= 8  # at most the near-tie pixels move


@pytest.mark.parametrize("backend", ["onnxruntime", "pytorch"])
def test_label_map_contract_reproduces_the_reference(backend, tmp_path, pspnet_checkpoint, pspnet_case):
    """Both resizes and the argmax inside the graph (exported with --output labels)."""
    from deployzoo.cli import main

    onnx_path = tmp_path / "labels.onnx"
    if backend == "onnxruntime":
        assert main(["export", "mmseg-pspnet-r50-d8-voc12aug", "--output", "labels", "--checkpoint",
                     str(pspnet_checkpoint), "--out", str(onnx_path)]) == 0
    args = ["predict", "mmseg-pspnet-r50-d8-voc12aug-labels", str(pspnet_case["image"]), "--backend", backend,
            "--checkpoint", str(pspnet_checkpoint), "--out", str(tmp_path)]
    if backend == "onnxruntime":
        args += ["--onnx", str(onnx_path)]
    assert main(args) == 0
    _labels_match(read_label_png(tmp_path / "label_maps" / "case-1.png"), pspnet_case)
