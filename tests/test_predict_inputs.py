"""predict checks every input before the work, and --skip-bad leaves bad images out (issue 14, item 9).

Without --skip-bad a bad input stops predict in seconds, before weights are loaded, naming every bad file, with
nothing written; an image whose header is fine but whose data does not decode is found during the run, and then
the other images' predictions are still written (finished work is never lost) before the error.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from deployzoo.cli import main

REFINEDET = "refinedet320-vgg16-voc"
FAMILIES = [REFINEDET, "mmdet-mask-rcnn-r50-fpn-1x", "d2-cascade-mask-rcnn-r50-fpn-3x", "mmdet-fsaf-r50-fpn-1x",
            "mmdet-fsaf-r50-fpn-1x-v3post", "mmseg-pspnet-r50-d8-voc12aug", "mmseg-pspnet-r50-d8-voc12aug-labels"]


def _image(path: Path, seed: int = 0, suffix_hw: tuple[int, int] = (48, 64)) -> Path:
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), suffix_hw[::-1])
    assert cv2.imwrite(str(path), image)
    return path


def _bad_files(folder: Path) -> dict[str, Path]:
    """One file of each kind that cannot be read, each checkable from its header alone."""
    folder.mkdir(parents=True, exist_ok=True)
    good_jpeg = _image(folder / "good.jpg").read_bytes()
    files = {
        "missing": folder / "missing.png",
        "empty": folder / "empty.png",
        "foreign": folder / "notes.jpg",
        "truncated": folder / "cut.jpg",
        "directory": folder / "adir.png",
    }
    files["empty"].write_bytes(b"")
    files["foreign"].write_text("these are not pixels\n")
    files["truncated"].write_bytes(good_jpeg[: len(good_jpeg) // 2])
    files["directory"].mkdir()
    if hasattr(os, "mkfifo"):  # a named pipe: reading it would block until a writer comes
        files["pipe"] = folder / "pipe.jpg"
        os.mkfifo(files["pipe"])
    return files


def _body_broken_png(path: Path) -> Path:
    """A PNG whose header (size) reads fine but whose pixel data does not decode: found only during the run."""
    data = bytearray(cv2.imencode(".png", np.random.default_rng(5).integers(0, 256, (48, 64, 3), np.uint8))[1])
    data[len(data) // 2: len(data) // 2 + 200] = bytes(200)
    path.write_bytes(bytes(data))
    return path


class _StubRefineDet:
    """RefineDet-shaped outputs that follow the picture (seeded by its pixels): three confident boxes per image,
    so predict's whole path runs in milliseconds instead of the real network's seconds."""

    batch_size = 1

    def infer(self, feeds):
        images = feeds["image"]
        n = images.shape[0]
        out = {"arm_loc": np.zeros((n, 6375, 4), np.float32), "arm_conf": np.tile([0.0, 1.0], (n, 6375, 1)),
               "odm_loc": np.zeros((n, 6375, 4), np.float32), "odm_conf": np.zeros((n, 6375, 21), np.float32)}
        out["odm_conf"][..., 0] = 1.0
        for b in range(n):
            rng = np.random.default_rng(int(abs(float(images[b].sum())) * 1000) % 2**32)
            out["odm_loc"][b] = rng.uniform(-0.2, 0.2, (6375, 4))
            for prior, label in zip(rng.choice(6375, 3, replace=False), rng.integers(1, 21, 3)):
                out["odm_conf"][b, prior] = 0.0
                out["odm_conf"][b, prior, label] = 0.9
        return {k: v.astype(np.float32) for k, v in out.items()}


@pytest.fixture()
def stub_engine(monkeypatch):
    """predict's engine replaced by _StubRefineDet (input checks and result handling are what is tested)."""
    import deployzoo.pipeline
    from deployzoo.pipeline import Engine

    monkeypatch.setattr(deployzoo.pipeline, "open_engine",
                        lambda spec, *args, **kwargs: Engine(spec, _StubRefineDet(), None, None, "stub"))


@pytest.fixture()
def no_weights(monkeypatch):
    """Fail the test if predict loads weights, exports or builds an engine."""
    import deployzoo.engine
    import deployzoo.pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before every input was checked")

    monkeypatch.setattr(deployzoo.pipeline, "open_engine", refuse)
    monkeypatch.setattr(deployzoo.pipeline, "export_model", refuse)
    monkeypatch.setattr(deployzoo.engine, "load_model", refuse)


@pytest.mark.parametrize("model", FAMILIES)
def test_bad_inputs_stop_predict_before_the_model_naming_every_one(tmp_path, no_weights, capsys, model):
    good = _image(tmp_path / "first.png")
    bad = _bad_files(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["predict", model, "--out", str(out), str(good), *map(str, bad.values())]) == 2
    err = capsys.readouterr().err
    assert f"{len(bad)} of {len(bad) + 1} images are unusable" in err and "nothing was run" in err
    for path in bad.values():
        assert str(path) in err
    assert "first.png" not in err
    assert not out.exists()  # nothing written


def test_one_bad_input_is_named_with_its_problem(tmp_path, no_weights, capsys):
    good = _image(tmp_path / "a.png")
    assert main(["predict", REFINEDET, "--out", str(tmp_path / "o"), str(good), str(tmp_path / "gone.jpg")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'gone.jpg'}: image file not found" in err and "--skip-bad" in err


def test_skip_bad_with_nothing_usable_is_an_error(tmp_path, no_weights, capsys):
    bad = _bad_files(tmp_path / "in")
    assert main(["predict", REFINEDET, "--skip-bad", "--out", str(tmp_path / "o"), str(bad["missing"]),
                 str(bad["empty"])]) == 2
    assert "none of the 2 images is usable" in capsys.readouterr().err


def test_skip_bad_leaves_bad_images_out_warns_and_counts(tmp_path, stub_engine, capsys):
    first, last = _image(tmp_path / "first.png", 1), _image(tmp_path / "last.png", 2)
    bad = _bad_files(tmp_path / "in")
    broken = _body_broken_png(tmp_path / "broken.png")
    out = tmp_path / "o"
    # options between the images, too
    assert main(["predict", REFINEDET, str(first), str(bad["missing"]), "--backend", "pytorch", "--skip-bad",
                 "--max-dets", "3", str(broken), "--out", str(out), str(bad["truncated"]), str(last)]) == 0
    captured = capsys.readouterr()
    both = captured.out + captured.err
    for path in (bad["missing"], bad["truncated"], broken):
        assert f"warning: skipped {path}" in both
    assert "3 of 5 images skipped as bad input" in captured.out
    records = json.loads((out / "predictions.json").read_text())
    assert [r["path"] for r in records] == [str(first)] * 3 + [str(last)] * 3


def test_an_image_that_fails_only_when_decoded_keeps_the_other_predictions(tmp_path, stub_engine, capsys):
    first, last = _image(tmp_path / "first.png", 1), _image(tmp_path / "last.png", 2)
    broken = _body_broken_png(tmp_path / "broken.png")
    out = tmp_path / "o"
    assert main(["predict", REFINEDET, "--backend", "pytorch", "--max-dets", "2", "--out", str(out), str(first),
                 str(broken), str(last)]) == 2
    err = capsys.readouterr().err
    assert "error: 1 image(s) gave no result" in err and str(broken) in err and "not a decodable image" in err
    assert f"the predictions of the other 2 are in {out / 'predictions.json'}" in err
    records = json.loads((out / "predictions.json").read_text())  # finished work is kept
    assert [r["path"] for r in records] == [str(first)] * 2 + [str(last)] * 2


@pytest.mark.parametrize("backend", ["pytorch", "pytorch-compile", "pytorch-aoti"])
def test_onnx_with_a_pytorch_backend_is_refused_not_ignored(tmp_path, capsys, backend):
    onnx = tmp_path / "mine.onnx"
    onnx.write_bytes(b"not read")
    image = str(_image(tmp_path / "a.png"))
    for argv in (["predict", REFINEDET, "--out", str(tmp_path / "o"), image],
                 ["eval", REFINEDET, "--data", str(tmp_path), "--out", str(tmp_path / "e")],
                 ["compare", REFINEDET, "--out", str(tmp_path / "c"), "--images", image]):
        assert main([*argv, "--onnx", str(onnx), "--backend", backend]) == 2
        err = capsys.readouterr().err
        assert f"--onnx {onnx} is run by --backend onnxruntime or openvino" in err and f"--backend {backend}" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
def test_a_named_pipe_as_a_model_or_class_file_is_refused_not_read(tmp_path, capsys):
    image = str(_image(tmp_path / "a.png"))
    cases = {"--onnx": "pipe.onnx", "--checkpoint": "pipe.pth", "--classes": "pipe.txt"}
    for option, name in cases.items():
        os.mkfifo(tmp_path / name)
        backend = ["--backend", "pytorch"] if option == "--checkpoint" else []
        assert main(["predict", REFINEDET, image, option, str(tmp_path / name), *backend,
                     "--out", str(tmp_path / "o")]) == 2
        assert f"{tmp_path / name}: not a regular file" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "pipe.onnx"), "--out", str(tmp_path / "b")]) == 2
    assert "not a regular file" in capsys.readouterr().err
