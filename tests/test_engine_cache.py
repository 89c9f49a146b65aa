"""The engine cache (deployzoo.cache): one place for exported graphs, reused, checked, written atomically."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from deployzoo import cache
from deployzoo.cli import main

REFINEDET = "refinedet320-vgg16-voc"
IMAGE = Path(__file__).parent / "fixtures" / REFINEDET / "case-1.png"


def test_the_cache_lives_where_DEPLOYZOO_CACHE_says(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPLOYZOO_CACHE", str(tmp_path / "c"))
    assert cache.cache_root() == tmp_path / "c" and cache.kind_dir("onnx") == tmp_path / "c" / "onnx"
    monkeypatch.delenv("DEPLOYZOO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "deployzoo"


def test_an_entry_is_built_once_reused_and_rebuilt_when_truncated(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPLOYZOO_CACHE", str(tmp_path))
    builds, said = [], []

    def build(tmp: Path) -> None:
        builds.append(tmp)
        (tmp / "thing.xml").write_text("<xml/>")
        (tmp / "thing.bin").write_bytes(b"\x01" * 5000)

    folder = cache.kind_dir("openvino")
    first = cache.cached(folder, "thing", [".xml", ".bin"], build, {"model": "m"}, say=said.append)
    assert first == folder / "thing.xml" and first.is_file() and len(builds) == 1
    assert not builds[0].exists()  # the temporary build folder is gone: only whole files were renamed in
    assert cache.cached(folder, "thing", [".xml", ".bin"], build, say=said.append) == first and len(builds) == 1
    assert "reusing" in said[-1]

    with open(folder / "thing.bin", "r+b") as f:  # a copy cut short
        f.truncate(1000)
    cache.cached(folder, "thing", [".xml", ".bin"], build, say=said.append)
    assert len(builds) == 2 and (folder / "thing.bin").stat().st_size == 5000
    assert "thing.bin has 1000 bytes, 5000 were written" in said[-1] and "building it again" in said[-1]

    # Written to in the middle, same size and same first and last MiB: the modification time gives it away.
    big = cache.kind_dir("aoti")
    cache.cached(big, "pkg", [".pt2"], lambda tmp: (tmp / "pkg.pt2").write_bytes(bytes(3 << 20)), say=said.append)
    time.sleep(0.05)  # file times may tick in jiffies (up to 10 ms): the write must land on a later one
    with open(big / "pkg.pt2", "r+b") as f:
        f.seek(3 << 19)
        f.write(b"junk" * 1024)
    record = json.loads((big / "pkg.entry.json").read_text())
    assert cache.file_fingerprint(big / "pkg.pt2") == record["files"]["pkg.pt2"]["fingerprint"]  # the ends agree
    cache.cached(big, "pkg", [".pt2"], lambda tmp: (tmp / "pkg.pt2").write_bytes(bytes(3 << 20)), say=said.append)
    assert "pkg.pt2 was modified after it was written" in said[-1] and "building it again" in said[-1]
    assert (big / "pkg.pt2").read_bytes() == bytes(3 << 20)
    # A record from before modification times were kept is not trusted either
    del record["files"]["pkg.pt2"]["mtime_ns"]
    (big / "pkg.entry.json").write_text(json.dumps(record))
    cache.cached(big, "pkg", [".pt2"], lambda tmp: (tmp / "pkg.pt2").write_bytes(bytes(3 << 20)), say=said.append)
    assert "recorded without its modification time" in said[-1]

    (folder / "thing.entry.json").unlink()  # an interrupted build: files without a record are not trusted
    cache.cached(folder, "thing", [".xml", ".bin"], build, say=said.append)
    assert len(builds) == 3 and "no complete record" in said[-1]


def test_a_failed_build_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPLOYZOO_CACHE", str(tmp_path))

    def build(tmp: Path) -> None:
        (tmp / "x.onnx").write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        cache.cached(cache.kind_dir("onnx"), "x", [".onnx"], build)
    assert [p.name for p in cache.kind_dir("onnx").iterdir()] == []


def test_clear_removes_only_the_cache_kinds(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPLOYZOO_CACHE", str(tmp_path))
    (tmp_path / "users-own-file.txt").write_text("keep me")
    cache.cached(cache.kind_dir("aoti"), "p", [".pt2"], lambda tmp: (tmp / "p.pt2").write_bytes(b"x" * 10))
    assert [e.stem for e in cache.entries()] == ["p"]
    count, size = cache.clear()
    assert count == 2 and size > 10 and cache.entries() == []
    assert (tmp_path / "users-own-file.txt").read_text() == "keep me"


@pytest.mark.slow
def test_predict_leaves_no_model_in_out_and_reuses_the_cached_graph(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DEPLOYZOO_CACHE", str(tmp_path / "cache"))
    args = ["predict", REFINEDET, str(IMAGE), "--no-draw"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    assert "exporting" in first and "into the engine cache" in first
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    second = capsys.readouterr().out
    assert "engine cache: reusing ONNX" in second and "exporting" not in second
    for out in ("a", "b"):
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == ["predict.json", "predictions.json"]
    assert (json.loads((tmp_path / "a" / "predictions.json").read_text())
            == json.loads((tmp_path / "b" / "predictions.json").read_text()))
    [entry] = cache.entries()
    assert entry.record["fields"]["model"] == REFINEDET and entry.record["fields"]["stand_in"] is True
    assert entry.record["fields"]["batch"] == 1 and entry.record["built"]["opset"] == 17

    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out
    assert str(tmp_path / "cache") in listed and entry.stem in listed
    assert max(len(line) for line in listed.splitlines() if str(tmp_path) not in line) <= 100
    with open(entry.files[0], "r+b") as f:
        f.truncate(1 << 20)
    assert main([*args, "--out", str(tmp_path / "c")]) == 0
    assert "cannot be reused" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0 and cache.entries() == []


def test_an_engine_from_a_stand_in_onnx_says_so(tmp_path, refinedet_spec):
    """Issue 18 item 5: the stand-in note travels with an exported graph (its metadata) into the engine's
    weights description, which eval's metrics.json and predict's pictures carry."""
    from test_model_files import REFINEDET_OUTPUTS, STAND_IN, tiny_onnx

    from deployzoo.pipeline import onnx_weights_note, open_engine

    stand_in = tiny_onnx(tmp_path / "s.onnx", REFINEDET_OUTPUTS, {"image": (3, 320, 320)},
                         {"deployzoo.model": REFINEDET, "deployzoo.weights": STAND_IN})
    engine = open_engine(refinedet_spec, "onnxruntime", 1, onnx_path=stand_in)
    assert "exported from stand-in weights" in engine.weights and "NOT those of the trained model" in engine.weights
    trained = tiny_onnx(tmp_path / "t.onnx", REFINEDET_OUTPUTS, {"image": (3, 320, 320)},
                        {"deployzoo.model": REFINEDET, "deployzoo.weights": "RefineDet320_VOC_final.pth"})
    assert onnx_weights_note(trained) == f"from {trained} (exported from RefineDet320_VOC_final.pth)"


def test_other_class_names_are_another_cache_entry():
    """The names are written into the graph's metadata, so a graph exported with other names is not reused."""
    import dataclasses
    from types import SimpleNamespace

    from deployzoo.registry import get_spec

    spec = get_spec(REFINEDET)
    renamed = dataclasses.replace(spec, class_names=tuple(f"part_{i}" for i in range(len(spec.class_names))))
    fields = [cache.onnx_fields(SimpleNamespace(spec=s, weights="w", is_stand_in=True, _weights_digest="d"), 1, 17)
              for s in (spec, renamed)]
    assert fields[0]["class_names"] != fields[1]["class_names"]
    assert cache._key(fields[0]) != cache._key(fields[1])
