"""Interop with the file layout of the Ascend benchmark tools.

Three kinds of file:
  * ``.bin`` inputs: one preprocessed image [3, H, W] as raw C-order float32 bytes, no header.
  * ``.info`` lists: one line per image, ``index path width height`` separated by spaces;
    index is 0-based; path is the ``.bin`` file (preprocessed-bin lists) or the image file
    (jpg lists); width and height are in pixels.
  * output dumps: one raw file per image and output, ``<stem>_<k>.bin``, where k is the output
    index, 0-based or 1-based depending on the tool version. Stems may contain underscores
    ("2008_000001_0.bin" is stem "2008_000001", k 0), so the LAST ``_<digits>.bin`` is parsed.
    Only raw ``.bin`` dumps are supported; the ``.txt`` dumps some tools write are not.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from deployzoo.errors import BadInputError

_DUMP_RE = re.compile(r"^(?P<stem>.+)_(?P<k>\d+)\.bin$")  # greedy stem: last "_<digits>" wins


# ---------------------------------------------------------------------------------------- .bin


def write_bin(path: str | Path, array: np.ndarray, dtype: type | np.dtype = np.float32) -> Path:
    """Write ``array`` (typically one preprocessed image [3, H, W]) as raw C-order bytes of ``dtype``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(array, dtype=dtype).tofile(path)
    return path


def read_bin(path: str | Path, shape: tuple[int, ...], dtype: type | np.dtype = np.float32) -> np.ndarray:
    """Read a raw ``.bin`` as an array of ``shape``; BadInputError if the byte count does not match."""
    path = Path(path)
    dt = np.dtype(dtype)
    expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise BadInputError(path, "file not found") from None
    if actual != expected:
        raise BadInputError(
            path,
            f"has {actual} bytes, expected {expected} ({tuple(shape)} x {dt.name}, {dt.itemsize} bytes each)",
        )
    return np.fromfile(path, dtype=dt).reshape(shape)


# --------------------------------------------------------------------------------------- .info


class InfoRow(NamedTuple):
    """One ``.info`` line: 0-based index, file path (as written), width and height in pixels."""

    index: int
    path: str
    width: int
    height: int


def write_info(path: str | Path, rows: list[tuple[int, str, int, int]]) -> Path:
    """Write ``index path width height`` lines. Paths with whitespace are refused (the format splits on it)."""
    path = Path(path)
    lines = []
    for index, file, width, height in rows:
        file = str(file)
        if not file or any(c.isspace() for c in file):
            raise BadInputError(file or path, "path is empty or contains whitespace, which the .info format cannot hold")
        lines.append(f"{int(index)} {file} {int(width)} {int(height)}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def read_info(path: str | Path) -> list[InfoRow]:
    """Parse an ``.info`` file. Blank lines are skipped; malformed lines and repeated indices raise
    BadInputError naming the file and the 1-based line number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(path, "file not found") from None
    except UnicodeDecodeError as e:
        raise BadInputError(path, f"not a text file ({e.reason})") from None
    rows: list[InfoRow] = []
    seen: dict[int, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise BadInputError(path, f"line {lineno}: expected 'index path width height', got {line.strip()!r}")
        try:
            index, width, height = int(parts[0]), int(parts[2]), int(parts[3])
        except ValueError:
            raise BadInputError(
                path, f"line {lineno}: index, width and height must be integers, got {line.strip()!r}"
            ) from None
        if index < 0 or width <= 0 or height <= 0:
            raise BadInputError(
                path, f"line {lineno}: index must be >= 0 and width, height > 0, got {line.strip()!r}"
            )
        if index in seen:
            raise BadInputError(path, f"line {lineno}: index {index} already used on line {seen[index]}")
        seen[index] = lineno
        rows.append(InfoRow(index, parts[1], width, height))
    return rows


# -------------------------------------------------------------------------------------- dumps


@dataclass
class DumpIndex:
    """Dump files found in one directory.

    ``base`` is the file index of the first output (0 or 1); ``files[stem][k]`` is the path
    of output k (0-based position in the graph's outputs) or None when missing;
    ``missing[stem]`` lists the missing file indices (as they appear in file names).
    """

    directory: Path
    num_outputs: int
    base: int
    files: dict[str, list[Path | None]] = field(default_factory=dict)
    missing: dict[str, list[int]] = field(default_factory=dict)

    @property
    def stems(self) -> list[str]:
        return list(self.files)

    def path(self, stem: str, k: int) -> Path:
        """File for output ``k`` (0-based) of ``stem``; BadInputError if it is missing."""
        if not 0 <= k < self.num_outputs:
            raise IndexError(f"output {k} out of range for {self.num_outputs} outputs")
        idx = self.base + k
        expected = self.directory / f"{stem}_{idx}.bin"
        if stem not in self.files:
            raise BadInputError(expected, f"no dumps for stem '{stem}' in {self.directory}")
        p = self.files[stem][k]
        if p is None:
            raise BadInputError(expected, f"missing dump: stem '{stem}', output index {idx}, in {self.directory}")
        return p


def _scan(directory: Path) -> dict[str, dict[int, Path]]:
    found: dict[str, dict[int, Path]] = {}
    for p in directory.iterdir():
        m = _DUMP_RE.match(p.name)
        if m and p.is_file():
            found.setdefault(m["stem"], {})[int(m["k"])] = p
    return found


def _lookup(directory: Path, stems: list[str]) -> dict[str, dict[int, Path]]:
    # Only the requested stems count: other files in the directory take no part in base detection.
    wanted = set(stems)
    found: dict[str, dict[int, Path]] = {s: {} for s in stems}
    for stem, ks in _scan(directory).items():
        if stem in wanted:
            found[stem] = ks
    return found


def _detect_base(directory: Path, found: dict[str, dict[int, Path]], num_outputs: int) -> int:
    """0 if files use indices 0..N-1, 1 if 1..N; every stem with files must agree."""
    zero, one = [], []
    for stem, ks in found.items():
        has0, hasN = 0 in ks, num_outputs in ks
        if has0 and hasN:
            raise BadInputError(
                directory,
                f"stem '{stem}' has both {stem}_0.bin and {stem}_{num_outputs}.bin: cannot tell whether "
                f"output indices start at 0 or 1 (is num_outputs={num_outputs} right?)",
            )
        beyond = sorted(k for k in ks if k > num_outputs)
        if beyond:
            raise BadInputError(
                directory, f"stem '{stem}' has output index {beyond[0]} but num_outputs={num_outputs}"
            )
        if has0:
            zero.append(stem)
        elif hasN:
            one.append(stem)
    if zero and one:
        raise BadInputError(
            directory,
            f"stems disagree on the first output index: '{zero[0]}' starts at 0, '{one[0]}' starts at 1",
        )
    if zero:
        return 0
    if one:
        return 1
    if num_outputs == 1 or not any(found.values()):
        raise BadInputError(directory, "no '<stem>_<k>.bin' output dumps found")
    # Only middle indices (1..N-1) present: both layouts are possible.
    raise BadInputError(
        directory,
        f"cannot tell whether output indices start at 0 or 1: no stem has {{stem}}_0.bin or {{stem}}_{num_outputs}.bin",
    )


def find_dumps(
    directory: str | Path,
    stems: list[str] | None,
    num_outputs: int,
    *,
    strict: bool = True,
) -> DumpIndex:
    """Index the ``<stem>_<k>.bin`` dumps of ``stems`` (all stems found when None).

    Detects whether indices start at 0 or 1. With ``strict`` (default) any missing file raises
    BadInputError naming the directory, the stems and their missing indices; otherwise the
    gaps are recorded in ``DumpIndex.missing`` and only loading that stem fails (for --skip-bad).
    With ``stems=None`` every file ending in ``_<digits>.bin`` counts, so keep input ``.bin``
    files out of the dump directory.
    """
    directory = Path(directory)
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    if not directory.is_dir():
        raise BadInputError(directory, "dump directory not found")
    found = _scan(directory) if stems is None else _lookup(directory, list(stems))
    base = _detect_base(directory, found, num_outputs)

    index = DumpIndex(directory=directory, num_outputs=num_outputs, base=base)
    for stem in sorted(found) if stems is None else list(stems):
        ks = found[stem]
        index.files[stem] = [ks.get(base + k) for k in range(num_outputs)]
        gaps = [base + k for k in range(num_outputs) if base + k not in ks]
        if gaps:
            index.missing[stem] = gaps
    if strict and index.missing:
        shown = [f"'{s}' index {', '.join(map(str, g))}" for s, g in list(index.missing.items())[:5]]
        more = len(index.missing) - len(shown)
        raise BadInputError(
            directory,
            f"missing output dumps for {len(index.missing)} stem(s): " + "; ".join(shown)
            + (f"; and {more} more" if more > 0 else ""),
        )
    return index


def load_dump(
    dump_index: DumpIndex,
    stem: str,
    shapes: list[tuple[int, ...]],
    dtype: type | np.dtype = np.float32,
) -> list[np.ndarray]:
    """Read the ``num_outputs`` dumps of one image, output k reshaped to ``shapes[k]`` as given
    (with or without a batch dim: caller's choice). Byte-count mismatch -> BadInputError naming the file."""
    if len(shapes) != dump_index.num_outputs:
        raise ValueError(f"got {len(shapes)} shapes for {dump_index.num_outputs} outputs")
    return [read_bin(dump_index.path(stem, k), shape, dtype) for k, shape in enumerate(shapes)]
