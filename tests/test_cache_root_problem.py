"""A $DEPLOYZOO_CACHE that cannot hold entries: one line naming it, never an OSError traceback."""
from __future__ import annotations

from pathlib import Path

import pytest

from deployzoo import cache
from deployzoo.cli import main
from deployzoo.errors import BadInputError


def _build(tmp: Path) -> None:
    (tmp / "x.onnx").write_bytes(b"graph")


def test_a_usable_cache_has_no_problem(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPLOYZOO_CACHE", str(tmp_path / "not" / "yet" / "made"))  # created on first build
    assert cache.root_problem() is None
    assert cache.cached(cache.kind_dir("onnx"), "x", [".onnx"], _build).is_file()


@pytest.mark.parametrize("below", ["", "sub/deeper"])
def test_a_file_in_place_of_the_cache_is_one_error_naming_it(monkeypatch, tmp_path, below):
    blocker = tmp_path / "cachefile"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DEPLOYZOO_CACHE", str(blocker / below) if below else str(blocker))
    problem = cache.root_problem()
    assert problem is not None and "$DEPLOYZOO_CACHE" in problem and f"{blocker} is a file" in problem
    with pytest.raises(BadInputError, match="is not a folder"):
        cache.cached(cache.kind_dir("onnx"), "x", [".onnx"], _build)
    assert blocker.read_text() == "not a folder"  # nothing was written over it


def test_cache_list_and_doctor_warn_about_a_file_in_place_of_the_cache(monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "cachefile"
    blocker.write_text("")
    monkeypatch.setenv("DEPLOYZOO_CACHE", str(blocker))
    assert main(["cache", "list"]) == 0
    assert f"warning: {blocker}: the engine cache ($DEPLOYZOO_CACHE) is not a folder" in capsys.readouterr().out
    from deployzoo import doctor

    assert "warning: the engine cache ($DEPLOYZOO_CACHE) is not a folder" in doctor.report()


@pytest.mark.parametrize("record", ["[1, 2]", '{"files": []}', '{"files": {"x.onnx": {"size": "big", "fingerprint": "f"}}}',
                                    '{"files": {"x.onnx": 5}}', '{"files": {"../x.onnx": {"size": 5, "fingerprint": "f"}}}',
                                    '{"files": {"x.onnx": {"size": 5, "fingerprint": "f"}}, "fields": [1]}'])
def test_a_malformed_record_is_rebuilt_not_a_traceback(monkeypatch, tmp_path, capsys, record):
    monkeypatch.setenv("DEPLOYZOO_CACHE", str(tmp_path))
    folder = cache.kind_dir("onnx")
    cache.cached(folder, "x", [".onnx"], _build)
    (folder / "x.entry.json").write_text(record)  # edited by hand, or a disk error
    assert cache.entries() == [] and "(empty)" in cache.listing()
    said = []
    assert cache.cached(folder, "x", [".onnx"], _build, say=said.append).read_bytes() == b"graph"
    assert "no complete record" in said[-1]
    [entry] = cache.entries()
    assert entry.problem() is None
