"""Bad checkpoints for RefineDet are refused with every problem named, through the command line."""
from __future__ import annotations

import torch

from deployzoo.cli import main


def test_missing_extra_and_misshaped_keys_are_named_in_one_error(tmp_path, refinedet_checkpoint, capsys):
    state = torch.load(refinedet_checkpoint, weights_only=True)
    del state["odm_conf.3.bias"]
    state["extras.7.weight"] = torch.zeros(3)
    state["arm_loc.1.weight"] = torch.zeros(12, 512, 1, 1)
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    code = main(["export", "refinedet320-vgg16-voc", "--checkpoint", str(broken), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(broken) in err
    for key in ("odm_conf.3.bias", "extras.7.weight", "arm_loc.1.weight"):
        assert key in err
    assert "(12, 512, 3, 3)" in err.replace("[", "(").replace("]", ")") or "12, 512, 3, 3" in err
    assert not (tmp_path / "m.onnx").exists()


def test_wrapped_checkpoint_loads(tmp_path, refinedet_checkpoint, refinedet_spec):
    from deployzoo.engine import load_model

    state = torch.load(refinedet_checkpoint, weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    loaded = load_model(refinedet_spec, wrapped)
    assert loaded.mapping_report.counts.get("copied") == 98


def test_not_a_checkpoint_is_refused(tmp_path, capsys):
    fake = tmp_path / "weights.pth"
    fake.write_bytes(b"\xff\xd8\xff\xe0 this is a jpeg, not weights")
    assert main(["export", "refinedet320-vgg16-voc", "--checkpoint", str(fake), "--out", str(tmp_path / "m.onnx")]) == 2
    assert str(fake) in capsys.readouterr().err


def test_verbose_prints_the_mapping(tmp_path, refinedet_checkpoint, capsys):
    from deployzoo.engine import load_model
    from deployzoo.registry import get_spec

    loaded = load_model(get_spec("refinedet320-vgg16-voc"), refinedet_checkpoint)
    text = loaded.mapping_report.format(verbose=True)
    assert "vgg.0.weight" in text and "odm_conf.3.bias" in text
