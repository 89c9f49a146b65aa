"""PSPNet building blocks: exact adaptive pooling exported at any size, the PSP head, resize-to-input,
preprocessing sizes, batching by size, label-map results on disk, checkpoint strictness."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from deployzoo.compare import LabelMatch
from deployzoo.errors import CheckpointError, DeployzooError
from deployzoo.heads.psp import PSPHead
from deployzoo.ops.adaptive_pool import adaptive_avg_pool2d
from deployzoo.ops.resize import resize_bilinear_to_hw
from deployzoo.registry import get_spec
from deployzoo.runner import ResultStore, run_dataset
from deployzoo.structures import LabelMap
from deployzoo.transforms import ImageMeta

NAME = "mmseg-pspnet-r50-d8-voc12aug"
SIZES = [(64, 86), (63, 63), (64, 64), (5, 4), (2, 7), (1, 1)]  # most not divisible by 3 or 6


def _export(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str], dynamic: dict) -> ort.InferenceSession:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=input_names, opset_version=17, dynamo=False,
                          dynamic_axes=dynamic)
    proto = onnx.load(str(path))
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    onnx.save(proto, str(path))
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("hw", SIZES)
def test_adaptive_pool_equals_pytorch_eager(hw):
    x = torch.randn(2, 5, *hw, generator=torch.Generator().manual_seed(0))
    for s in (1, 2, 3, 6):
        torch.testing.assert_close(adaptive_avg_pool2d(x, s), F.adaptive_avg_pool2d(x, s), rtol=0, atol=1e-6)
    torch.testing.assert_close(adaptive_avg_pool2d(x, (2, 3)), F.adaptive_avg_pool2d(x, (2, 3)), rtol=0, atol=1e-6)


def test_pytorch_own_export_fails_where_ours_works(tmp_path):
    """The reason this op exists: torch's exporter refuses adaptive pooling to 6 over 64x86."""
    class Builtin(torch.nn.Module):
        def forward(self, x):
            return F.adaptive_avg_pool2d(x, 6)

    with pytest.raises(Exception):
        _export(Builtin(), (torch.randn(1, 2, 64, 86),), tmp_path / "builtin.onnx", ["x"], {"x": {2: "h", 3: "w"}})


def test_adaptive_pool_exports_once_and_is_exact_at_every_size(tmp_path):
    class Pyramid(torch.nn.Module):
        def forward(self, x):
            return tuple(adaptive_avg_pool2d(x, s) for s in (1, 2, 3, 6))

    session = _export(Pyramid(), (torch.randn(1, 4, 64, 86),), tmp_path / "pool.onnx", ["x"],
                      {"x": {0: "b", 2: "h", 3: "w"}})
    ops = {n.op_type for n in onnx.load(str(tmp_path / "pool.onnx")).graph.node}
    assert "AveragePool" not in ops and "GlobalAveragePool" not in ops  # no floor-kernel approximation
    for hw in SIZES:
        x = torch.randn(2, 4, *hw, generator=torch.Generator().manual_seed(1))
        for s, out in zip((1, 2, 3, 6), session.run(None, {"x": x.numpy()})):
            np.testing.assert_allclose(out, F.adaptive_avg_pool2d(x, s).numpy(), rtol=0, atol=1e-6, err_msg=f"{hw} {s}")


def test_psp_head_exported_matches_pytorch_where_pooling_does_not_divide(tmp_path):
    torch.manual_seed(0)
    head = PSPHead(in_channels=16, channels=8, num_classes=5).eval()
    for m in head.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    session = _export(head, (torch.randn(1, 16, 64, 86),), tmp_path / "head.onnx", ["x"], {"x": {0: "b", 2: "h", 3: "w"}})
    for hw in [(64, 86), (63, 63), (64, 64), (5, 7)]:
        x = torch.randn(2, 16, *hw, generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            expected = head(x).numpy()
        (got,) = session.run(None, {"x": x.numpy()})
        assert got.shape == (2, 5, *hw)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_psp_head_equals_a_restatement_with_torch_adaptive_pooling():
    torch.manual_seed(0)
    head = PSPHead(in_channels=16, channels=8, num_classes=5).eval()
    x = torch.randn(1, 16, 63, 63)
    with torch.inference_mode():
        branches = [x] + [F.interpolate(b[1](F.adaptive_avg_pool2d(x, s)), size=(63, 63), mode="bilinear",
                                        align_corners=False) for s, b in zip((1, 2, 3, 6), head.psp_modules)]
        expected = head.conv_seg(head.bottleneck(torch.cat(branches, 1)))
        torch.testing.assert_close(head(x), expected, rtol=0, atol=1e-5)


def test_resize_to_a_size_given_as_input_exports_dynamically(tmp_path):
    class ToHW(torch.nn.Module):
        def forward(self, x, hw):
            return resize_bilinear_to_hw(x, hw)

    args = (torch.randn(1, 3, 8, 11), torch.tensor([[20.0, 17.0]]))
    session = _export(ToHW(), args, tmp_path / "resize.onnx", ["x", "hw"], {"x": {0: "b", 2: "h", 3: "w"}, "hw": {0: "b"}})
    for (h, w), target in [((8, 11), (20, 17)), ((64, 86), (480, 640)), ((13, 9), (5, 4))]:
        x = torch.randn(2, 3, h, w)
        hw = torch.tensor([target, target], dtype=torch.float32)
        (got,) = session.run(None, {"x": x.numpy(), "hw": hw.numpy()})
        expected = F.interpolate(x, size=target, mode="bilinear", align_corners=False).numpy()
        assert got.shape == expected.shape
        # ONNX Runtime's linear Resize rounds its weights differently (~3e-5 relative at 7.5x upsampling).
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_preprocess_follows_mmcv_rescale():
    spec = get_spec(NAME)
    for (h, w), expected in [((375, 500), (512, 683)), ((500, 375), (683, 512)), ((480, 640), (512, 683)),
                             ((100, 500), (410, 2048)), ((281, 499), (512, 909))]:
        array, meta = spec.preprocess(np.zeros((h, w, 3), np.uint8))
        assert meta.resized_hw == expected and array.shape == (3, *expected)


def test_fixed_canvas_variant_keeps_voc_images_and_pads():
    spec = get_spec(NAME + "@500x500")
    assert spec.input_hw == (500, 500) and spec.batch_key is None
    assert spec.output_shapes == {"seg_logits": (21, 500, 500)}
    arrays, metas = zip(*(spec.preprocess(np.zeros(hw + (3,), np.uint8)) for hw in [(375, 500), (500, 333)]))
    assert [m.resized_hw for m in metas] == [(375, 500), (500, 333)]
    feeds = spec.make_feeds(list(arrays), list(metas), 2)
    assert feeds["image"].shape == (2, 3, 500, 500) and not feeds["image"][0, :, 375:].any()
    with pytest.raises(DeployzooError, match="logits only"):
        get_spec(NAME + "-labels@500x500")


def test_labels_contract_feeds_original_sizes():
    spec = get_spec(NAME + "-labels")
    assert spec.input_names == ("image", "orig_hw") and spec.output_dtypes == {"label_map": "uint8"}
    metas = [ImageMeta((375, 500), (512, 683))]
    feeds = spec.make_feeds([np.ones((3, 512, 683), np.float32)], metas, 2)
    assert feeds["orig_hw"].tolist() == [[375.0, 500.0], [375.0, 500.0]]
    assert spec.batch_key(metas[0]) != spec.batch_key(ImageMeta((376, 500), (512, 683)))


def test_runner_batches_only_images_of_one_size(tmp_path):
    """Batch key: a size change closes the batch (so nothing is padded); short batches are zero-filled."""
    from deployzoo.data.loader import ImageItem

    sizes = [(4, 6), (4, 6), (6, 4), (4, 6), (4, 6), (4, 6)]
    items = []
    for i, hw in enumerate(sizes):
        path = tmp_path / f"{i}.png"
        import cv2

        cv2.imwrite(str(path), np.full((*hw, 3), i, np.uint8))
        items.append(ImageItem(str(i), str(path)))
    seen = []

    def infer(feeds, ids):
        seen.append((list(ids), feeds["image"].shape))
        return {"value": feeds["image"].mean(axis=(1, 2, 3))}

    def preprocess(bgr):
        return bgr.transpose(2, 0, 1).astype(np.float32), ImageMeta(bgr.shape[:2], bgr.shape[:2])

    def collate(arrays, metas, batch):
        image = np.zeros((batch, *arrays[0].shape), np.float32)
        image[: len(arrays)] = arrays  # fails if a batch mixed sizes
        return {"image": image}

    run = run_dataset(items, preprocess, infer, lambda out, meta: float(out["value"]), 2, collate, workers=0,
                      progress=False, batch_key=lambda meta: meta.resized_hw)
    assert [ids for ids, _ in seen] == [["0", "1"], ["2"], ["3", "4"], ["5"]]
    assert all(shape[0] == 2 for _, shape in seen)
    assert run.results == {str(i): float(i) for i in range(6)}


def test_result_store_round_trips_label_maps(tmp_path):
    maps = {"a": LabelMap(np.arange(12, dtype=np.uint8).reshape(3, 4)), "b": LabelMap(np.full((2, 5), 255, np.uint8))}
    store = ResultStore(tmp_path, {"model": NAME})
    store.append(list(maps.items()), [{"image_id": "c", "path": "c.jpg", "problem": "corrupt"}])
    results, skipped = ResultStore(tmp_path, {"model": NAME}, resume=True).load()
    assert set(results) == {"a", "b"} and skipped[0]["image_id"] == "c"
    for k, m in maps.items():
        assert results[k].labels.dtype == np.uint8 and np.array_equal(results[k].labels, m.labels)


def test_label_match_allows_only_near_ties():
    ref = np.zeros((4, 4), np.uint8)
    eng = ref.copy()
    eng[0, 0] = 3
    margin = np.ones((4, 4), np.float32)
    m = LabelMatch()
    m.add(eng, ref, margin)
    assert not m.ok and m.differing == 1 and m.near_ties == 0
    margin[0, 0] = 5e-6
    m = LabelMatch()
    m.add(eng, ref, margin)
    assert m.ok and "1 of 16 pixels differ" in m.describe()
    m = LabelMatch()
    m.add(eng[:3], ref, margin)
    assert not m.ok


def test_postprocess_resizes_logits_to_the_original_and_takes_argmax():
    spec = get_spec(NAME)
    logits = np.random.default_rng(0).standard_normal((21, 16, 22)).astype(np.float32)
    meta = ImageMeta((12, 17), (16, 21))  # column 21 is padding and must be cropped
    result = spec.make_postprocess(keep_margin=True)({"seg_logits": logits}, meta)
    full = F.interpolate(torch.from_numpy(logits[None, :, :16, :21]), size=(12, 17), mode="bilinear", align_corners=False)[0]
    assert np.array_equal(result.labels, full.argmax(0).numpy().astype(np.uint8))
    top2 = full.topk(2, dim=0).values
    np.testing.assert_allclose(result.margin, (top2[0] - top2[1]).numpy())


def _official_weights() -> dict[str, torch.Tensor]:
    keys = json.loads((Path(__file__).parent / "fixtures" / NAME / "keys.json").read_text())
    return {k: torch.from_numpy(np.asarray(v)) for k, v in sys.modules["dzinit"].make_state_dict(keys["tensors"], 0).items()}


def test_stand_in_weights_are_the_fixture_weights():
    from deployzoo.engine import load_model

    official = _official_weights()
    state = load_model(get_spec(NAME)).model.state_dict()
    assert set(state) == {k for k in official if not k.startswith("auxiliary_head.")}
    for name, value in state.items():
        assert torch.equal(value, official[name]), name


def test_checkpoint_errors_name_every_bad_key(tmp_path):
    from deployzoo.engine import load_model

    weights = _official_weights()
    del weights["decode_head.conv_seg.bias"]
    weights["decode_head.bottleneck.conv.weight"] = torch.zeros(512, 2048, 3, 3)
    weights["decode_head.extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": weights, "meta": {}}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(get_spec(NAME), path)
    text = str(info.value)
    assert "decode_head.conv_seg.bias" in text and "decode_head.extra.weight" in text
    assert "decode_head.bottleneck.conv.weight" in text and str(path) in text


def test_export_output_option_picks_the_contract():
    from deployzoo.cli import _with_output

    assert _with_output(NAME, "labels") == NAME + "-labels"
    assert _with_output(NAME + "-labels", "logits") == NAME
    assert _with_output(NAME + "@500x500", "logits") == NAME + "@500x500"
    with pytest.raises(DeployzooError, match="segmentation"):
        _with_output("refinedet320-vgg16-voc", "labels")


def test_run_evaluates_free_size_pspnet_at_batch_1():
    """Free-size PSPNet batches only images of one network-input size; run's few generated images of four
    sizes gave short (padded) batches first and no ratio at batch 2. A fixed canvas batches everything."""
    from deployzoo.models.pspnet import same_size_key
    from deployzoo.registry import get_spec

    free = get_spec("mmseg-pspnet-r50-d8-voc12aug")
    assert free.run_defaults["eval_batch"] == 1
    metas = [free.preprocess(np.zeros((h, w, 3), np.uint8))[1] for h, w in [(375, 500), (500, 375), (333, 500)]]
    assert len({same_size_key(m) for m in metas}) == 3  # the generated set's sizes never share a batch
    assert get_spec("mmseg-pspnet-r50-d8-voc12aug@512x1024").run_defaults["eval_batch"] == 2

