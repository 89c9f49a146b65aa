"""Safe checkpoint loading and strict key mapping (deployzoo.checkpoints)."""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deployzoo.checkpoints import (
    MappingReport,
    RenameRules,
    load_checkpoint,
    load_into_model,
    remap_state_dict,
)
from deployzoo.checkpoints.safe_load import _NumpyOnlyUnpickler
from deployzoo.errors import CheckpointError


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def tiny_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tiny_model().state_dict().items()}


class Gadget:
    """A custom class: weights_only must refuse to rebuild it."""

    def __init__(self) -> None:
        self.x = 1


class RunsShell:
    """Pickles as a call to os.system: the classic malicious checkpoint."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class OpensFile:
    """Pickles as builtins.open(path, 'w'): creating the file would prove code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# --------------------------------------------------------------------- .pth formats


def test_bare_state_dict(tmp_path: Path) -> None:
    state = tiny_state()
    path = tmp_path / "bare.pth"
    torch.save(state, path)
    raw = load_checkpoint(path)
    assert raw.format == "pth-bare"
    assert raw.path == path
    assert list(raw.tensors) == list(state)
    assert raw.tensors["1.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(raw.tensors["0.weight"], state["0.weight"])
    assert raw.notes == []


def test_state_dict_wrapped_keeps_meta(tmp_path: Path) -> None:
    path = tmp_path / "mmdet.pth"
    meta = {
        "CLASSES": ("cat", "dog"),
        "epoch": 12,
        "mmdet_version": "2.25.0",
        "score": np.float64(0.5),
        "palette": np.array([[0, 0, 255], [255, 0, 0]], dtype=np.uint8),
    }
    optimizer = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": []}
    torch.save({"meta": meta, "state_dict": tiny_state(), "optimizer": optimizer}, path)
    raw = load_checkpoint(path)
    assert raw.format == "pth-state_dict"
    assert raw.meta["meta"]["CLASSES"] == ("cat", "dog")
    assert raw.meta["meta"]["score"] == 0.5 and type(raw.meta["meta"]["score"]) is float
    assert raw.meta["meta"]["palette"] == [[0, 0, 255], [255, 0, 0]]
    assert "optimizer" not in raw.meta
    assert any("optimizer" in n for n in raw.notes)


def test_model_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "d2.pth"
    torch.save({"model": tiny_state(), "iteration": 90000}, path)
    raw = load_checkpoint(path)
    assert raw.format == "pth-model"
    assert raw.meta == {"iteration": 90000}
    assert "0.weight" in raw.tensors


def test_dataparallel_prefix_stripped_only_if_on_all_keys(tmp_path: Path) -> None:
    state = tiny_state()
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    raw = load_checkpoint(path)
    assert list(raw.tensors) == list(state)
    assert any("module." in n for n in raw.notes)

    mixed = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    torch.save(mixed, path)
    raw = load_checkpoint(path)
    assert sorted(raw.tensors) == ["b", "module.a"]
    assert raw.notes == []


def test_legacy_torch_format(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(tiny_state(), path, _use_new_zipfile_serialization=False)
    raw = load_checkpoint(path)
    assert raw.format == "pth-bare"
    assert len(raw.tensors) == 7


def test_pth_with_custom_class_refused(tmp_path: Path) -> None:
    path = tmp_path / "gadget.pth"
    torch.save({"model": tiny_state(), "extra": Gadget(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "Gadget" in message and "argparse.Namespace" in message
    assert "arbitrary code" in message


def test_pth_with_os_system_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": tiny_state(), "x": RunsShell(f"touch {marker}")}, path)
    with pytest.raises(CheckpointError, match="system"):
        load_checkpoint(path)
    assert not marker.exists()


# ---------------------------------------------------------------------- .pkl formats


def d2_pickle(path: Path, protocol: int, dtype: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "backbone.stem.conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(dtype),
        "backbone.stem.conv1.norm.bias": rng.standard_normal(4).astype(dtype),
        "counter": np.array([7], dtype=np.int64),
        "scalar": np.float32(2.5),
    }
    blob = {"model": arrays, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    path.write_bytes(pickle.dumps(blob, protocol=protocol))
    return arrays


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_detectron2_pkl(tmp_path: Path, protocol: int, dtype: str) -> None:
    path = tmp_path / "model_final.pkl"
    arrays = d2_pickle(path, protocol, dtype)
    raw = load_checkpoint(path)
    assert raw.format == "pkl-detectron2"
    assert raw.meta == {"__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    weight = raw.tensors["backbone.stem.conv1.weight"]
    assert weight.dtype == getattr(torch, dtype)
    np.testing.assert_array_equal(weight.numpy(), arrays["backbone.stem.conv1.weight"])
    assert raw.tensors["counter"].dtype == torch.int64
    assert raw.tensors["scalar"].shape == ()


def test_pkl_written_by_numpy1_names(tmp_path: Path) -> None:
    # numpy 1.x writes numpy.core.*; protocol 2 names globals as plain text, so the
    # old spelling can be restored byte-for-byte.
    data = pickle.dumps({"model": {"w": np.arange(6, dtype=">f8").reshape(2, 3)}}, protocol=2)
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old != data
    path = tmp_path / "old.pkl"
    path.write_bytes(old)
    raw = load_checkpoint(path)
    assert raw.tensors["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert raw.tensors["w"].dtype == torch.float64


@pytest.mark.parametrize(
    "module,name",
    [
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
        ("__builtin__", "bytes"),
    ],
)
def test_allowlist_admits_both_numpy_spellings(tmp_path: Path, module: str, name: str) -> None:
    unpickler = _NumpyOnlyUnpickler(io.BytesIO(b""), tmp_path / "x.pkl")
    assert callable(unpickler.find_class(module, name))


@pytest.mark.parametrize("protocol", [2, 5])
def test_malicious_pkl_refused_and_not_run(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    payload = {"model": {"w": np.zeros(2)}, "x": RunsShell(f"touch {marker}")}
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "refused global" in message and "system" in message
    assert not marker.exists()


def test_pkl_open_call_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "created_by_pickle"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": OpensFile(str(marker))}}, protocol=2))
    with pytest.raises(CheckpointError, match="open"):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_pickle_named_pth_goes_through_safe_unpickler(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "renamed.pth"
    path.write_bytes(pickle.dumps({"x": RunsShell(f"touch {marker}")}, protocol=4))
    with pytest.raises(CheckpointError, match="refused global"):
        load_checkpoint(path)
    assert not marker.exists()


def test_detectron1_blobs_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "d1.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.zeros(3)}}, protocol=2))
    with pytest.raises(CheckpointError, match="Detectron1"):
        load_checkpoint(path)


# ------------------------------------------------------------------- not checkpoints


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("empty.pth", b"", "empty"),
        ("photo.pth", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(100), "JPEG"),
        ("notes.pth", b"these are not weights\n", "text file"),
        ("page.pth", b"<!DOCTYPE html><html>404</html>", "HTML"),
        ("lfs.pth", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "Git LFS"),
        ("noise.bin", bytes(range(7, 250, 3)), "unrecognised binary"),
        ("noise.pkl", b"\x80\x05garbage-after-proto", "could not be read"),
        ("text.pkl", b"hello\n", "text file"),
        ("truncated.pth", b"PK\x03\x04" + bytes(40), "could not be read as a PyTorch"),
    ],
)
def test_non_checkpoints_refused_with_file_name(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_dict_without_tensors_refused(tmp_path: Path) -> None:
    path = tmp_path / "nothing.pth"
    torch.save({"epoch": 3, "config": "a"}, path)
    with pytest.raises(CheckpointError, match="no weights") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.pth"
    with pytest.raises(CheckpointError, match="no such") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------- remapping


def test_remap_reports_all_problems_in_one_error() -> None:
    model_state = tiny_state()
    ckpt = tiny_state()
    del ckpt["1.running_var"]
    ckpt["head.extra.weight"] = torch.zeros(5)
    ckpt["0.weight"] = torch.zeros(4, 3, 5, 5)
    with pytest.raises(CheckpointError) as info:
        remap_state_dict(ckpt, model_state, RenameRules(), source="ckpt.pth")
    message = str(info.value)
    assert message.startswith("ckpt.pth:")
    assert "3 problems" in message
    assert "missing (1)" in message and "1.running_var" in message
    assert "unexpected (1)" in message and "head.extra.weight" in message
    assert "mis-shaped (1)" in message and "0.weight" in message
    assert "[4, 3, 5, 5]" in message and "[4, 3, 3, 3]" in message


def test_remap_duplicates_and_dtype_kind_mismatch() -> None:
    model_state = tiny_state()
    ckpt = tiny_state()
    ckpt["conv.bias"] = ckpt["0.bias"].clone()
    ckpt["1.num_batches_tracked"] = torch.tensor(1.0)
    rules = RenameRules(renames=[(r"conv\.(.*)", r"0.\1")])
    with pytest.raises(CheckpointError) as info:
        remap_state_dict(ckpt, model_state, rules)
    message = str(info.value)
    assert "duplicates (1)" in message and "0.bias" in message and "conv.bias" in message
    assert "dtype (1)" in message and "1.num_batches_tracked" in message


def test_rename_first_fullmatch_wins_and_ignore_rules() -> None:
    model_state = tiny_state()
    ckpt = {f"backbone.{k.replace('0.', 'conv.').replace('1.', 'bn.')}": v for k, v in tiny_state().items()}
    ckpt["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(81, 1024)
    rules = RenameRules(
        renames=[
            (r"backbone\.conv\.(.+)", r"0.\1"),
            (r"backbone\.(conv|bn)\.(.+)", r"1.\2"),  # only bn reaches here: first match won for conv
        ],
        ignore=[(r"roi_heads\..*", "box head is not part of this backbone")],
    )
    mapped, report = remap_state_dict(ckpt, model_state, rules, source="d2.pkl")
    assert set(mapped) == set(model_state)
    counts = report.counts
    assert counts["renamed"] == 7 and counts["ignored"] == 1 and counts["copied"] == 0
    ignored = [e for e in report.entries if e.action.startswith("ignored")]
    assert ignored[0].action == "ignored: box head is not part of this backbone"
    assert ignored[0].checkpoint_key == "roi_heads.box_predictor.cls_score.weight"


def test_ignore_beats_rename_and_partial_match_does_not_rename() -> None:
    rules = RenameRules(renames=[(r"a\.b", "x")], ignore=[(r"a\.b", "unused")])
    assert rules.ignore_reason("a.b") == "unused"
    assert rules.rename("a.b.c") == "a.b.c"  # fullmatch, not search
    assert rules.rename("a.b") == "x"


def test_transform_keep_init_and_float64_cast() -> None:
    model_state = tiny_state()
    ckpt = {k: v.double() if v.is_floating_point() else v for k, v in tiny_state().items()}
    del ckpt["1.num_batches_tracked"]
    rules = RenameRules(
        transforms={"0.weight": lambda t: t.flip(1)},  # BGR -> RGB input channels
        keep_init=[(r".*num_batches_tracked", "unused at inference")],
    )
    mapped, report = remap_state_dict(ckpt, model_state, rules)
    assert mapped["0.weight"].dtype == torch.float32
    assert torch.allclose(mapped["0.weight"], ckpt["0.weight"].flip(1).float())
    assert mapped["1.num_batches_tracked"].dtype == torch.int64
    assert report.counts["transformed"] == 1 and report.counts["kept_init"] == 1
    assert report.counts["cast"] == 6


def test_transform_for_unknown_key_is_an_error() -> None:
    rules = RenameRules(transforms={"0.wieght": lambda t: t})
    with pytest.raises(CheckpointError, match="0.wieght"):
        remap_state_dict(tiny_state(), tiny_state(), rules)


def test_bad_regex_rejected_at_definition() -> None:
    with pytest.raises(ValueError, match="bad pattern"):
        RenameRules(renames=[("(", "x")])


def test_verbose_report_lists_every_key() -> None:
    ckpt = tiny_state()
    ckpt["aux.weight"] = torch.zeros(2)
    _, report = remap_state_dict(ckpt, tiny_state(), RenameRules(ignore=[(r"aux\..*", "aux head")]), "m.pth")
    short = report.format()
    assert short.count("\n") == 0 and "7 copied" in short and "1 ignored" in short
    verbose = report.format(verbose=True)
    for key in ckpt:
        assert key in verbose
    assert "[4, 3, 3, 3]" in verbose
    as_dict = report.to_dict()
    json.dumps(as_dict)
    assert len(as_dict["entries"]) == 8 and as_dict["counts"]["copied"] == 7


# ------------------------------------------------------------------------ end to end


def test_load_into_model_from_pkl(tmp_path: Path) -> None:
    source = tiny_model()
    for p in source.parameters():
        nn.init.normal_(p)
    names = {"0": "stem.conv1", "1": "stem.conv1.norm"}
    blob = {
        "model": {
            f"{names[k.split('.')[0]]}.{k.split('.', 1)[1]}": v.numpy().astype(np.float64)
            for k, v in source.state_dict().items()
            if not k.endswith("num_batches_tracked")
        },
        "__author__": "Detectron2 Model Zoo",
    }
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(blob, protocol=2))
    rules = RenameRules(
        renames=[(r"stem\.conv1\.norm\.(.+)", r"1.\1"), (r"stem\.conv1\.(.+)", r"0.\1")],
        keep_init=[(r".*\.num_batches_tracked", "BN step counter, unused at inference")],
    )
    target = tiny_model()
    report = load_into_model(target, path, rules)
    assert isinstance(report, MappingReport)
    assert report.source == str(path)
    assert "format: pkl-detectron2" in report.notes
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.allclose(target.state_dict()[key], value)


def test_load_into_model_mismatch_names_file(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError) as info:
        load_into_model(tiny_model(), path, RenameRules())
    message = str(info.value)
    assert str(path) in message and "fc.weight" in message and "missing (7)" in message

