"""Every option of every command says what it does (`deployzoo CMD --help`), and `models` / `doctor` fit a
terminal."""
from __future__ import annotations

import argparse
import json

from deployzoo.cli import build_parser, main


def _walk(parser: argparse.ArgumentParser, path: str = "deployzoo"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_of_every_command_has_a_help_line():
    missing = [f"{path}: {'/'.join(a.option_strings) or a.dest}" for path, a in _walk(build_parser())
               if not (a.help or "").strip() or a.help == argparse.SUPPRESS and a.option_strings == []]
    assert missing == []


def test_models_fits_100_columns_and_lists_every_name(capsys):
    from deployzoo.registry import model_names

    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 100
    assert all(name in text for name in model_names())
    assert "variant:" in text and "architectures" in text.splitlines()[0]
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == model_names() and all(r["checkpoint_format"] for r in rows)
    assert main(["models", "--wide"]) == 0
    assert "checkpoint:" in capsys.readouterr().out


def test_doctor_names_backends_cpu_features_gpu_threads_and_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYZOO_CACHE", str(tmp_path / "c"))
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    for word in ("onnxruntime", "openvino", "pytorch-aoti", "CPU:", "GPU:", "threads:", str(tmp_path / "c")):
        assert word in text
    assert "0 entries" in text
    from deployzoo.backends.openvino_int8_forms import wants_1x1_forms
    from deployzoo.doctor import cpu_flags

    if cpu_flags() is not None:  # what int8 gets on this CPU, as the quantizer will decide it
        assert ("as 1x1 convolutions here" in text) is wants_1x1_forms()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    from deployzoo.doctor import cpu_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512f amx_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512f", "amx_bf16"}
    assert cpu_flags(tmp_path / "absent") is None
