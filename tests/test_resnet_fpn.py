"""ResNet variants and FPN: structure, mmdetection's own outputs on the fixture, ONNX with dynamic H/W."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from dzinit import make_state_dict  # tests/fixtures is put on sys.path by conftest.py
from torch import nn

from deployzoo.backbones.resnet import ResNet
from deployzoo.compare import tensor_diff
from deployzoo.layers.frozen_bn import FrozenBatchNorm2d
from deployzoo.necks.fpn import FPN

MASK_RCNN = Path(__file__).parent / "fixtures" / "mmdet-mask-rcnn-r50-fpn-1x"
C2_C5 = (256, 512, 1024, 2048)


def _randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norm statistics so that a wrong norm formula or a swapped tensor shows up."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            c = m.running_mean.shape[0]
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.05)
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return model


def _conv_with_stride(block: nn.Module) -> list[str]:
    return [n for n in ("conv1", "conv2", "conv3") if getattr(block, n).stride != (1, 1)]


# --- structure --------------------------------------------------------------------------------------------

def test_stride_goes_in_3x3_for_pytorch_style_and_in_1x1_for_caffe_style():
    pytorch_style = ResNet(50)
    caffe_style = ResNet(50, stride_in_1x1=True, norm="frozen_bn")
    for name in ("layer2", "layer3", "layer4"):
        assert _conv_with_stride(getattr(pytorch_style, name)[0]) == ["conv2"]
        assert _conv_with_stride(getattr(caffe_style, name)[0]) == ["conv1"]
        for model in (pytorch_style, caffe_style):
            assert getattr(model, name)[0].downsample[0].stride == (2, 2)
            assert all(_conv_with_stride(b) == [] and b.downsample is None for b in getattr(model, name)[1:])
    # layer1 keeps the resolution but still changes 64 -> 256 channels: it has a stride-1 shortcut conv.
    assert pytorch_style.layer1[0].downsample[0].stride == (1, 1)
    x = torch.randn(1, 3, 64, 96)
    for model in (pytorch_style, caffe_style):
        with torch.no_grad():
            outs = model.eval()(x)
        assert [tuple(o.shape) for o in outs] == [(1, 256, 16, 24), (1, 512, 8, 12), (1, 1024, 4, 6), (1, 2048, 2, 3)]


def test_state_dict_layout_is_the_mmdet_checkpoints():
    """Names and shapes equal the official backbone.* tensors; convs followed by a norm have no bias."""
    tensors = json.loads((MASK_RCNN / "keys.json").read_text())["tensors"]
    official = {name[len("backbone."):]: tuple(shape) for name, shape, *_ in tensors if name.startswith("backbone.")}
    ours = {k: tuple(v.shape) for k, v in ResNet(50).state_dict().items()}
    assert ours == official
    assert not any(k.endswith("bias") and "bn" not in k and "downsample.1" not in k for k in ours)


def test_deep_stem_keys_and_shapes():
    state = ResNet(50, deep_stem=True).state_dict()
    stem = {k: tuple(v.shape) for k, v in state.items() if k.startswith("stem.")}
    assert stem["stem.0.weight"] == (32, 3, 3, 3)
    assert stem["stem.3.weight"] == (32, 32, 3, 3)
    assert stem["stem.6.weight"] == (64, 32, 3, 3)
    for i, c in ((1, 32), (4, 32), (7, 64)):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            assert stem[f"stem.{i}.{leaf}"] == (c,)
    assert {k.split(".")[1] for k in stem} == {"0", "1", "3", "4", "6", "7"}
    assert not any(k.startswith(("conv1.", "bn1.")) for k in state)


def test_d8_dilations_and_output_stride():
    model = ResNet(
        50, deep_stem=True, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True, out_indices=(2, 3)
    )
    expected = {"layer1": [1] * 3, "layer2": [1] * 4, "layer3": [1] + [2] * 5, "layer4": [2, 4, 4]}
    for name, dilations in expected.items():
        convs = [b.conv2 for b in getattr(model, name)]
        assert [c.dilation[0] for c in convs] == dilations, name
        assert all(c.padding == c.dilation for c in convs)
    assert model.layer3[0].downsample[0].stride == (1, 1) and model.layer4[0].downsample[0].stride == (1, 1)
    with torch.no_grad():
        c4, c5 = model.eval()(torch.randn(1, 3, 64, 96))
    assert tuple(c4.shape) == (1, 1024, 8, 12) and tuple(c5.shape) == (1, 2048, 8, 12)


def test_frozen_bn_equals_batchnorm_eval():
    bn = _randomise_norms(nn.BatchNorm2d(64, eps=1e-5)).eval()
    frozen = FrozenBatchNorm2d(64)
    frozen.load_state_dict({k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"}, strict=True)
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    assert not list(frozen.parameters())
    x = torch.randn(2, 64, 5, 7) * 3
    with torch.no_grad():
        ref, out = bn(x), frozen(x)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_frozen_bn_resnet_equals_bn_resnet():
    bn_model = _randomise_norms(ResNet(50)).eval()
    state = {k: v for k, v in bn_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    frozen_model = ResNet(50, norm="frozen_bn")
    frozen_model.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ref, out in zip(bn_model(x), frozen_model.eval()(x)):
            assert (out - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max())


def test_frozen_bn_exports_to_mul_add():
    ops = _export_op_types(_randomise_norms(FrozenBatchNorm2d(8)).eval(), torch.randn(1, 8, 4, 4))
    assert ops <= {"Mul", "Add", "BatchNormalization"}, ops


@pytest.mark.parametrize(
    "kwargs", [{"depth": 34}, {"norm": "gn"}, {"strides": (1, 2, 2)}, {"out_indices": (3, 1)}, {"out_indices": (4,)}]
)
def test_resnet_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ResNet(**kwargs)


def test_fpn_levels_and_keys():
    feats = tuple(torch.randn(1, c, 16 // 2**i, 24 // 2**i) for i, c in enumerate(C2_C5))
    maxpool = FPN(C2_C5).eval()
    assert set(maxpool.state_dict()) == {
        f"{kind}.{i}.{leaf}" for kind in ("lateral_convs", "output_convs") for i in range(4) for leaf in ("weight", "bias")
    }
    with torch.no_grad():
        levels = maxpool(feats)
        assert [tuple(p.shape[-2:]) for p in levels] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
        assert torch.equal(levels[4], levels[3][..., ::2, ::2])
        assert len(FPN(C2_C5, extra="none").eval()(feats)) == 4

    # RetinaNet/FSAF: C3..C5 in, P6 from C5 (2048 -> 256), P7 from P6 with no ReLU.
    on_input = FPN(C2_C5[1:], extra="p6p7_on_input").eval()
    assert tuple(on_input.extra_convs[0].weight.shape) == (256, 2048, 3, 3)
    with torch.no_grad():
        levels = on_input(feats[1:])
        assert [tuple(p.shape[-2:]) for p in levels] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
        assert torch.allclose(levels[3], on_input.extra_convs[0](feats[3]))
        assert torch.allclose(levels[4], on_input.extra_convs[1](levels[3]))
        assert (levels[3] < 0).any()  # P7 sees the raw P6, negatives included

    # On exact /2 pyramids mmdet's size-based and detectron2's x2 upsampling agree.
    scale2 = FPN(C2_C5, upsample="scale2").eval()
    scale2.load_state_dict(maxpool.state_dict(), strict=True)
    with torch.no_grad():
        for a, b in zip(maxpool(feats), scale2(feats)):
            assert torch.equal(a, b)


def test_fpn_rejects_bad_arguments():
    with pytest.raises(ValueError):
        FPN(C2_C5, extra="p6p7")
    with pytest.raises(ValueError):
        FPN(C2_C5, upsample="bilinear")
    with pytest.raises(ValueError):
        FPN(C2_C5)(tuple(torch.randn(1, c, 4, 4) for c in C2_C5[1:]))


# --- mmdetection's own outputs --------------------------------------------------------------------------

MMDET_NECK_RENAME = {"lateral_convs": "lateral_convs", "fpn_convs": "output_convs"}


def _mmdet_r50_fpn(weights: dict[str, np.ndarray]) -> tuple[ResNet, FPN]:
    backbone = ResNet(50, stride_in_1x1=False, norm="bn")
    neck = FPN(C2_C5, 256, extra="maxpool")
    backbone_state, neck_state = {}, {}
    for key, value in weights.items():
        if key.startswith("backbone."):
            backbone_state[key[len("backbone."):]] = torch.from_numpy(np.asarray(value))
        elif key.startswith("neck."):
            m = re.fullmatch(r"neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)", key)
            assert m is not None, key
            neck_state[f"{MMDET_NECK_RENAME[m[1]]}.{m[2]}.{m[3]}"] = torch.from_numpy(value)
    backbone.load_state_dict(backbone_state, strict=True)
    neck.load_state_dict(neck_state, strict=True)
    return backbone.eval(), neck.eval()


def _mmdet_preprocess(bgr_chw: np.ndarray, case: dict) -> np.ndarray:
    """DetDataPreprocessor: BGR->RGB, float32, (x - mean) / std, zero-pad bottom/right to /32 -> [1,3,H,W]."""
    cfg = case["config"]["model.data_preprocessor"]
    assert cfg["bgr_to_rgb"] and cfg["pad_size_divisor"] == 32
    mean = np.asarray(cfg["mean"], np.float32)[:, None, None]
    std = np.asarray(cfg["std"], np.float32)[:, None, None]
    x = (bgr_chw[::-1].astype(np.float32) - mean) / std
    padded = np.zeros((1, 3, *case["preprocessing"]["padded_hw"]), np.float32)
    padded[0, :, : x.shape[1], : x.shape[2]] = x
    return padded


def test_mmdet_mask_rcnn_backbone_and_fpn_match_reference():
    case = json.loads((MASK_RCNN / "case-1.json").read_text())
    arrays = np.load(MASK_RCNN / "case-1.npz")
    keys = json.loads((MASK_RCNN / "keys.json").read_text())
    backbone, neck = _mmdet_r50_fpn(make_state_dict(keys["tensors"], seed=case["weights"]["seed"]))

    x = _mmdet_preprocess(arrays["input_bgr_chw"], case)
    assert x.shape == (1, 3, 800, 1088)
    with torch.no_grad():
        p2, _, _, p5, p6 = neck(backbone(torch.from_numpy(x)))
    for name, value in (("fpn_p2_c0_16", p2[0, :16]), ("fpn_p5", p5[0]), ("fpn_p6", p6[0])):
        diff = tensor_diff(name, value.numpy(), arrays[name])
        assert diff.ok, diff


# --- ONNX -----------------------------------------------------------------------------------------------

def _export(model: nn.Module, example: torch.Tensor, path: Path, dynamic_hw: bool, n_outputs: int) -> onnx.ModelProto:
    output_names = [f"out{i}" for i in range(n_outputs)]
    dynamic_axes = None
    if dynamic_hw:
        dynamic_axes = {"input": {2: "height", 3: "width"}, **{n: {2: f"{n}_h", 3: f"{n}_w"} for n in output_names}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model, (example,), str(path), input_names=["input"], output_names=output_names,
            opset_version=17, dynamic_axes=dynamic_axes, dynamo=False, do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    # onnxruntime refuses the newest IR versions: the lowest one that supports the opset.
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    onnx.checker.check_model(proto)
    return proto


def _export_op_types(model: nn.Module, example: torch.Tensor) -> set[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        with torch.no_grad():
            out = model(example)
        n = len(out) if isinstance(out, tuple) else 1
        proto = _export(model, example, Path(tmp) / "m.onnx", dynamic_hw=False, n_outputs=n)
    return {node.op_type for node in proto.graph.node}


class _BackboneWithFPN(nn.Module):
    def __init__(self, backbone: ResNet, neck: FPN):
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.neck(self.backbone(x))


def test_resnet_fpn_onnx_dynamic_hw_matches_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = _BackboneWithFPN(_randomise_norms(ResNet(50)), FPN(C2_C5, extra="maxpool")).eval()
    proto = _export(model, torch.randn(1, 3, 64, 64), tmp_path / "r50fpn.onnx", dynamic_hw=True, n_outputs=5)
    ops = {node.op_type for node in proto.graph.node}
    assert "Resize" in ops and all(node.domain in ("", "ai.onnx") for node in proto.graph.node)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for h, w in ((64, 96), (96, 64)):  # neither is the export size; both /32
        x = torch.randn(1, 3, h, w) * 2
        with torch.no_grad():
            expected = model(x)
        got = session.run(None, {"input": x.numpy()})
        assert [g.shape for g in got] == [tuple(e.shape) for e in expected]
        for i, (g, e) in enumerate(zip(got, expected)):
            diff = tensor_diff(f"level{i}@{h}x{w}", g, e.numpy())
            assert diff.ok, diff
