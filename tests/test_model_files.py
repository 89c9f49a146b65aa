"""Model files a user gives (.onnx, checkpoints) that cannot be used as given: one line naming the file and the
problem, before any work, for every command that takes one; notes for files that run but deserve a word."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from deployzoo.cli import main

REFINEDET = "refinedet320-vgg16-voc"
MASK_RCNN = "mmdet-mask-rcnn-r50-fpn-1x"
STAND_IN = "no checkpoint given: using deterministic stand-in weights (dz-init-v1, seed 0); outputs and accuracy are NOT those of the trained model"
REFINEDET_OUTPUTS = {"arm_loc": (6375, 4), "arm_conf": (6375, 2), "odm_loc": (6375, 4), "odm_conf": (6375, 21)}


def tiny_onnx(path: Path, outputs: dict[str, tuple[int, ...]], inputs: dict[str, tuple[int, ...]],
              metadata: dict[str, str] | None = None) -> Path:
    """A graph of constant (zero) outputs, batch 1, with the given input/output names and optional metadata."""
    nodes, declared = [], []
    for name, shape in outputs.items():
        value = numpy_helper.from_array(np.zeros((1, *shape), np.float32), name=f"{name}_value")
        nodes.append(helper.make_node("Constant", [], [name], value=value))
        declared.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, (1, *shape)))
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, (1, *s)) for n, s in inputs.items()]
    model = helper.make_model(helper.make_graph(nodes, "tiny", graph_inputs, declared),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("model-files")
    refinedet_inputs = {"image": (3, 320, 320)}
    made = {
        "no-metadata": tiny_onnx(root / "exported-elsewhere.onnx", REFINEDET_OUTPUTS, refinedet_inputs),
        "foreign": tiny_onnx(root / "classifier.onnx", {"logits": (1000,)}, {"input": (3, 224, 224)}),
        "other-model": tiny_onnx(root / "mask-rcnn.onnx", {"boxes": (100, 4)},
                                 {"image": (3, 64, 64), "img_hw": (2,)},
                                 {"deployzoo.model": MASK_RCNN, "deployzoo.weights": "mask_rcnn.pth"}),
        "stand-in": tiny_onnx(root / "refinedet-standin.onnx", REFINEDET_OUTPUTS, refinedet_inputs,
                              {"deployzoo.model": REFINEDET, "deployzoo.weights": STAND_IN}),
        "missing": root / "missing.onnx",
        "empty": root / "empty.onnx",
        "corrupt": root / "corrupt.onnx",
        "checkpoint": root / "weights.onnx",
    }
    made["empty"].write_bytes(b"")
    data = made["no-metadata"].read_bytes()
    made["corrupt"].write_bytes(data[: len(data) // 3] + b"\xff" * 64)  # cut short, with garbage after
    with zipfile.ZipFile(made["checkpoint"], "w") as z:  # what torch.save writes
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    image = root / "street.jpg"
    import cv2

    cv2.imwrite(str(image), np.full((60, 80, 3), 127, np.uint8))
    made["image"] = image
    return made


def _commands(onnx_file: Path, files: dict[str, Path], voc: Path, out: Path) -> dict[str, list[str]]:
    """Every command that takes an .onnx, with the rest of its arguments valid."""
    fast_bench = ["--batch", "1", "--iters", "1", "--min-seconds", "0", "--warmup", "0", "--no-native"]
    return {
        "bench FILE": ["bench", str(onnx_file), *fast_bench, "--out", str(out)],
        "bench MODEL --onnx": ["bench", REFINEDET, "--onnx", str(onnx_file), *fast_bench, "--out", str(out)],
        "predict --onnx": ["predict", REFINEDET, "--onnx", str(onnx_file), "--out", str(out), str(files["image"])],
        "eval --onnx": ["eval", REFINEDET, "--onnx", str(onnx_file), "--data", str(voc), "--out", str(out),
                        "--workers", "0"],
        "compare --onnx": ["compare", REFINEDET, "--onnx", str(onnx_file), "--images", str(files["image"]),
                           "--out", str(out)],
    }


PROBLEMS = {
    "missing": "model file not found",
    "empty": "empty (0 bytes)",
    "corrupt": "not an ONNX model",
    "checkpoint": "--checkpoint",
    "foreign": "no deployzoo metadata",
    "other-model": f"exported for {MASK_RCNN}, not {REFINEDET}",
}
COMMANDS = ["bench FILE", "bench MODEL --onnx", "predict --onnx", "eval --onnx", "compare --onnx"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", list(PROBLEMS))
def test_unusable_onnx_gives_one_line_naming_the_file(kind, command, files, synthetic_voc, tmp_path, capsys):
    if kind == "other-model" and command == "bench FILE":
        pytest.skip("with no model named, the file's own metadata decides the model")
    args = _commands(files[kind], files, synthetic_voc, tmp_path / "out")[command]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {files[kind]}: ") and PROBLEMS[kind] in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.onnx"))  # no export was started


def test_onnx_without_metadata_asks_for_the_model_name(files, tmp_path, capsys):
    args = _commands(files["no-metadata"], files, tmp_path, tmp_path / "out")["bench FILE"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no deployzoo metadata" in err and f"deployzoo bench MODEL --onnx {files['no-metadata']}" in err
    assert "unknown model ''" not in err


def test_onnx_without_metadata_runs_when_named_and_its_contract_fits(files, tmp_path, capsys):
    args = _commands(files["no-metadata"], files, tmp_path, tmp_path / "out")["bench MODEL --onnx"]
    assert main(args) == 0
    assert f"note: {files['no-metadata']} has no deployzoo metadata" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["bench FILE", "bench MODEL --onnx", "predict --onnx", "eval --onnx"])
def test_onnx_from_stand_in_weights_says_so(command, files, synthetic_voc, tmp_path, capsys):
    args = _commands(files["stand-in"], files, synthetic_voc, tmp_path / "out")[command]
    main(args)  # the zero-output stand-in graph may or may not score; the note must come first
    out = capsys.readouterr().out
    assert f"note: {files['stand-in']} was exported from stand-in weights" in out


def test_onnx_for_another_model_names_it_instead_of_missing_inputs(files, tmp_path, capsys):
    args = _commands(files["other-model"], files, tmp_path, tmp_path / "out")["predict --onnx"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert MASK_RCNN in err and "img_hw" not in err


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, refinedet_checkpoint) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-checkpoints")
    made = {"missing": root / "missing.pth", "empty": root / "empty.pth", "truncated": root / "truncated.pth"}
    made["empty"].write_bytes(b"")
    data = refinedet_checkpoint.read_bytes()
    made["truncated"].write_bytes(data[: len(data) // 2])
    return made


CHECKPOINT_COMMANDS = {
    "export": lambda c, o, voc, img: ["export", REFINEDET, "--checkpoint", c, "--out", f"{o}/m.onnx"],
    "predict": lambda c, o, voc, img: ["predict", REFINEDET, "--checkpoint", c, "--out", o, img],
    "eval": lambda c, o, voc, img: ["eval", REFINEDET, "--checkpoint", c, "--data", voc, "--out", o],
    "compare": lambda c, o, voc, img: ["compare", REFINEDET, "--checkpoint", c, "--images", img, "--out", o],
    "bench": lambda c, o, voc, img: ["bench", REFINEDET, "--checkpoint", c, "--batch", "1", "--out", o],
    "matrix": lambda c, o, voc, img: ["matrix", "--models", REFINEDET, "--backends", "onnxruntime", "--precisions",
                                      "fp32", "--batch", "1", "--checkpoint", c, "--out", o],
    "run": lambda c, o, voc, img: ["run", REFINEDET, "--checkpoint", c, "--data", voc, "--out", o],
}


@pytest.mark.parametrize("command", list(CHECKPOINT_COMMANDS))
@pytest.mark.parametrize("kind", ["missing", "empty", "truncated"])
def test_unusable_checkpoint_gives_one_line_for_every_command(kind, command, bad_checkpoints, files, synthetic_voc,
                                                              tmp_path, capsys):
    checkpoint = str(bad_checkpoints[kind])
    args = CHECKPOINT_COMMANDS[command](checkpoint, str(tmp_path / "out"), str(synthetic_voc), str(files["image"]))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {checkpoint}: ")


def test_checkpoint_of_another_model_is_summarised(refinedet_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", MASK_RCNN, "--checkpoint", str(refinedet_checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) <= 25, err
    assert "none of the 360 expected keys is present: this looks like a checkpoint of refinedet320-vgg16-voc" in err
    assert "missing (360)" in err and "unexpected (98)" in err and "--verbose" in err
    assert "RenameRules" not in err and "mmdetection .pth" in err
    assert not out.exists()
    with pytest.raises(Exception):
        main(["--verbose", "export", MASK_RCNN, "--checkpoint", str(refinedet_checkpoint), "--out", str(out)])
    full = capsys.readouterr().err
    state = torch.load(refinedet_checkpoint, weights_only=True)
    assert all(key in full for key in state)  # --verbose: every key


def _families():
    from deployzoo.checkpoint_families import _families

    return {family.names[0]: family for family in _families()}


FAMILIES = ["refinedet320-vgg16-voc", "mmdet-mask-rcnn-r50-fpn-1x", "d2-cascade-mask-rcnn-r50-fpn-3x",
            "mmdet-fsaf-r50-fpn-1x", "mmseg-pspnet-r50-d8-voc12aug"]


@pytest.mark.parametrize("given", FAMILIES)
@pytest.mark.parametrize("target", FAMILIES)
def test_every_family_recognises_every_other_familys_checkpoint(given, target):
    """The key names of family ``given``'s official file, loaded into ``target``: the message names ``given``."""
    from deployzoo.checkpoint_families import describe_mismatch, official_keys
    from deployzoo.registry import get_spec

    if given == target:
        pytest.skip("a family's own checkpoint fits")
    families = _families()
    assert set(FAMILIES) == set(families)  # a new family in the registry joins this test
    spec = get_spec(target)
    with torch.device("meta"):
        model_state = spec.build_model().state_dict()
    line = describe_mismatch(spec, sorted(official_keys(get_spec(given))), model_state)
    assert line is not None and line.endswith(f"this looks like a checkpoint of {' / '.join(families[given].names)}")
