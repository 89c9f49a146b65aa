"""Raw .bin inputs, .info lists and <stem>_<k>.bin output dumps (Ascend benchmark tool layout)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deployzoo.data.vendor_bin import (
    InfoRow,
    find_dumps,
    load_dump,
    read_bin,
    read_info,
    write_bin,
    write_info,
)
from deployzoo.errors import BadInputError


def test_bin_round_trip(tmp_path: Path) -> None:
    img = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float64)  # cast to float32 on write
    p = write_bin(tmp_path / "a.bin", img)
    assert p.stat().st_size == 3 * 5 * 7 * 4  # no header
    back = read_bin(p, (3, 5, 7))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, img.astype(np.float32))
    # C order: the first bytes are row 0 of channel 0
    np.testing.assert_array_equal(np.fromfile(p, np.float32)[:7], img[0, 0].astype(np.float32))


def test_bin_fortran_input_written_c_order(tmp_path: Path) -> None:
    img = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    np.testing.assert_array_equal(read_bin(write_bin(tmp_path / "f.bin", img), (2, 3, 4)), img)


def test_read_bin_size_mismatch_names_both_sizes(tmp_path: Path) -> None:
    p = write_bin(tmp_path / "a.bin", np.zeros((3, 4, 4), np.float32))
    with pytest.raises(BadInputError) as ei:
        read_bin(p, (3, 5, 5))
    assert ei.value.path == str(p)
    assert "192" in ei.value.problem and "300" in ei.value.problem
    with pytest.raises(BadInputError, match="not found"):
        read_bin(tmp_path / "nope.bin", (1,))


def test_info_round_trip(tmp_path: Path) -> None:
    rows = [(0, "bins/2008_000001.bin", 500, 375), (1, "bins/2008_000002.bin", 640, 480)]
    p = write_info(tmp_path / "imgs.info", rows)
    assert p.read_text().splitlines()[0] == "0 bins/2008_000001.bin 500 375"
    back = read_info(p)
    assert back == [InfoRow(*r) for r in rows]
    assert back[1].width == 640 and back[1].height == 480


def test_info_blank_lines_skipped(tmp_path: Path) -> None:
    p = tmp_path / "x.info"
    p.write_text("0 a.jpg 10 20\n\n1 b.jpg 30 40\n")
    assert [r.path for r in read_info(p)] == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize(
    "bad, lineno",
    [
        ("0 a.jpg 10 20\n1 b.jpg 30\n", 2),  # too few fields
        ("0 a.jpg 10 20\n\n1 b c.jpg 30 40\n", 3),  # space in path
        ("x a.jpg 10 20\n", 1),  # index not an integer
        ("0 a.jpg 10.5 20\n", 1),  # width not an integer
        ("0 a.jpg 10 20\n0 b.jpg 10 20\n", 2),  # repeated index
        ("0 a.jpg 0 20\n", 1),  # zero width
    ],
)
def test_info_malformed_lines(tmp_path: Path, bad: str, lineno: int) -> None:
    p = tmp_path / "bad.info"
    p.write_text(bad)
    with pytest.raises(BadInputError) as ei:
        read_info(p)
    assert ei.value.path == str(p)
    assert f"line {lineno}:" in ei.value.problem


def test_write_info_refuses_spaces(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="whitespace"):
        write_info(tmp_path / "x.info", [(0, "my image.jpg", 1, 1)])


def _dump(directory: Path, stem: str, base: int, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    arrays = []
    for k, shape in enumerate(shapes):
        a = np.random.default_rng(k).standard_normal(shape).astype(np.float32)
        write_bin(directory / f"{stem}_{base + k}.bin", a)
        arrays.append(a)
    return arrays


SHAPES = [(1, 4, 6), (1, 4)]


@pytest.mark.parametrize("base", [0, 1])
def test_dumps_base_detected_and_loaded(tmp_path: Path, base: int) -> None:
    expected = {s: _dump(tmp_path, s, base, SHAPES) for s in ("2008_000001", "2008_000002", "cat")}
    (tmp_path / "notes.txt").write_text("ignored")
    idx = find_dumps(tmp_path, None, num_outputs=2)
    assert idx.base == base
    assert idx.stems == ["2008_000001", "2008_000002", "cat"]  # underscores stay in the stem
    assert not idx.missing
    for stem, arrays in expected.items():
        got = load_dump(idx, stem, SHAPES)
        for a, b in zip(got, arrays):
            np.testing.assert_array_equal(a, b)
    # shapes are taken as given: without the batch dim works too
    assert load_dump(idx, "cat", [(4, 6), (4,)])[1].shape == (4,)


def test_dumps_with_explicit_stems_ignore_others(tmp_path: Path) -> None:
    _dump(tmp_path, "a_1", 1, SHAPES)  # files a_1_1.bin, a_1_2.bin
    _dump(tmp_path, "b", 0, SHAPES)  # another run's files with the other layout
    idx = find_dumps(tmp_path, ["a_1"], num_outputs=2)
    assert idx.base == 1 and idx.stems == ["a_1"]
    assert idx.path("a_1", 0).name == "a_1_1.bin"


def test_dumps_single_output_one_based(tmp_path: Path) -> None:
    _dump(tmp_path, "img_7", 1, [(3,)])
    idx = find_dumps(tmp_path, ["img_7"], num_outputs=1)
    assert idx.base == 1 and idx.path("img_7", 0).name == "img_7_1.bin"


def test_dumps_ambiguous_stem(tmp_path: Path) -> None:
    _dump(tmp_path, "x", 0, SHAPES)
    write_bin(tmp_path / "x_2.bin", np.zeros(1, np.float32))  # both _0 and _{num_outputs}
    with pytest.raises(BadInputError, match="both x_0.bin and x_2.bin"):
        find_dumps(tmp_path, None, num_outputs=2)


def test_dumps_stems_disagree(tmp_path: Path) -> None:
    _dump(tmp_path, "a", 0, SHAPES)
    _dump(tmp_path, "b", 1, SHAPES)
    with pytest.raises(BadInputError, match="disagree"):
        find_dumps(tmp_path, None, num_outputs=2)


def test_dumps_missing_index(tmp_path: Path) -> None:
    _dump(tmp_path, "2008_000001", 0, SHAPES)
    _dump(tmp_path, "2008_000002", 0, SHAPES[:1])  # output 1 never written
    with pytest.raises(BadInputError) as ei:
        find_dumps(tmp_path, None, num_outputs=2)
    assert ei.value.path == str(tmp_path)
    assert "'2008_000002' index 1" in ei.value.problem

    idx = find_dumps(tmp_path, None, num_outputs=2, strict=False)
    assert idx.missing == {"2008_000002": [1]}
    load_dump(idx, "2008_000001", SHAPES)  # the complete stem still loads
    with pytest.raises(BadInputError) as ei:
        load_dump(idx, "2008_000002", SHAPES)
    assert ei.value.path == str(tmp_path / "2008_000002_1.bin")
    assert "stem '2008_000002'" in ei.value.problem and "index 1" in ei.value.problem


def test_dumps_requested_stem_absent(tmp_path: Path) -> None:
    _dump(tmp_path, "a", 1, SHAPES)
    with pytest.raises(BadInputError, match="'zzz' index 1, 2"):
        find_dumps(tmp_path, ["a", "zzz"], num_outputs=2)


def test_dumps_index_beyond_num_outputs(tmp_path: Path) -> None:
    _dump(tmp_path, "a", 1, SHAPES + [(2,)])  # a_1..a_3 but caller says 2 outputs
    with pytest.raises(BadInputError, match="index 3 but num_outputs=2"):
        find_dumps(tmp_path, None, num_outputs=2)


def test_dumps_empty_or_absent_directory(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no '<stem>_<k>.bin' output dumps"):
        find_dumps(tmp_path, None, num_outputs=2)
    with pytest.raises(BadInputError, match="not found"):
        find_dumps(tmp_path / "missing", None, num_outputs=2)


def test_load_dump_size_mismatch_names_file(tmp_path: Path) -> None:
    _dump(tmp_path, "2008_000001", 0, SHAPES)
    idx = find_dumps(tmp_path, ["2008_000001"], num_outputs=2)
    with pytest.raises(BadInputError) as ei:
        load_dump(idx, "2008_000001", [(1, 4, 6), (1, 5)])
    assert ei.value.path == str(tmp_path / "2008_000001_1.bin")
    assert "16 bytes" in ei.value.problem and "expected 20" in ei.value.problem
    with pytest.raises(ValueError):
        load_dump(idx, "2008_000001", [(1, 4, 6)])
