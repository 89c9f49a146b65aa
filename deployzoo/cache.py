"""The engine cache: exported ONNX graphs, OpenVINO IRs (fp32 and int8) and AOTInductor packages, built once
and reused by every command.

Where: ``$DEPLOYZOO_CACHE`` if set, else ``$XDG_CACHE_HOME/deployzoo``, else ``~/.cache/deployzoo``. One folder
per kind (``onnx/``, ``openvino/``, ``int8/``, ``aoti/``); each entry is its file(s) plus a ``<stem>.entry.json``
record that lists every file with its size, a digest of its first and last MiB and its modification time. The
record is written last, after the files were renamed into place, so an entry without one, or whose file is shorter
or different than recorded (an interrupted copy, a full disk, a file written to since), is rebuilt and said so
instead of crashing a backend or, worse, running a damaged graph. The whole file is not hashed (a 290 MB graph
costs about a second each time it is opened): a change that keeps the size, both ends and the modification time
(bit rot, a tool that restores the time) is not seen; ``deployzoo cache clear`` removes such an entry.

ONNX entries are keyed by model name, a digest of the weights (every tensor of the state dict), batch size (or
dynamic), the graph's input shapes, precision, opset, the exporter's versions (torch, onnx, deployzoo) and a digest
of deployzoo's own source (a code change that alters a graph must not reuse an old one). OpenVINO and AOTInductor
entries carry their own keys (the ONNX file's hash; the weights, shapes, precision, device and torch version).

Writes are atomic: files are built in a private temporary folder inside the kind's folder and renamed into place
(os.replace), so two processes building the same entry both end with a whole one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from deployzoo.errors import BadInputError

CACHE_ENV = "DEPLOYZOO_CACHE"
KINDS = ("onnx", "openvino", "int8", "aoti")
RECORD_SUFFIX = ".entry.json"
_MIB = 1 << 20


def cache_root() -> Path:
    """The cache folder (not created here): ``$DEPLOYZOO_CACHE``, else the user's cache dir + ``/deployzoo``."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deployzoo"


def root_problem() -> str | None:
    """Why the cache folder cannot hold entries (a file is in its place, or it cannot be written), or None.
    Checked before a build so that a bad ``$DEPLOYZOO_CACHE`` is one line naming it, not an OSError traceback."""
    root = cache_root()
    where = f"the engine cache (${CACHE_ENV})" if os.environ.get(CACHE_ENV) else "the engine cache"
    # the nearest existing folder decides: the cache and its kind folders are created below it
    probe = root
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{where} is not a folder: {probe} is a file; set ${CACHE_ENV} to a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{where} cannot be written: {probe} is not writable; set ${CACHE_ENV} to a writable folder"
    return None


def kind_dir(kind: str) -> Path:
    """The folder of one kind of entry (``onnx``, ``openvino``, ``int8``, ``aoti``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; kinds: {', '.join(KINDS)}")
    return cache_root() / kind


def file_fingerprint(path: str | Path) -> str:
    """A cheap identity for a big file: ``<size>:<sha256 of its first and last MiB, 16 hex digits>``."""
    path = Path(path)
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        digest.update(f.read(_MIB))
        f.seek(max(0, size - _MIB))
        digest.update(f.read(_MIB))
    return f"{size}:{digest.hexdigest()[:16]}"


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class Entry:
    """One cache entry: its record and the folder it lives in."""

    kind: str
    stem: str
    record: dict[str, Any]
    folder: Path

    @property
    def files(self) -> list[Path]:
        return [self.folder / name for name in self.record.get("files", {})]

    @property
    def size_bytes(self) -> int:
        return sum(int(f.get("size", 0)) for f in self.record.get("files", {}).values())

    def problem(self) -> str | None:
        """Why the entry cannot be reused (a file missing, shorter or different than recorded), or None."""
        for name, expected in self.record.get("files", {}).items():
            path = self.folder / name
            if not path.is_file():
                return f"{name} is missing"
            size = path.stat().st_size
            if size != expected.get("size"):
                return f"{name} has {size} bytes, {expected.get('size')} were written (truncated or replaced)"
            if file_fingerprint(path) != expected.get("fingerprint"):
                return f"{name} differs from what was written (corrupt or replaced)"
            # A write inside the file keeps its size and, away from its ends, the fingerprint: the time shows it.
            if "mtime_ns" not in expected:
                return f"{name} was recorded without its modification time (by an older deployzoo)"
            if path.stat().st_mtime_ns != expected["mtime_ns"]:
                return f"{name} was modified after it was written (its modification time changed)"
        return None


def _record_path(folder: Path, stem: str) -> Path:
    return folder / f"{stem}{RECORD_SUFFIX}"


def read_entry(folder: Path, stem: str) -> Entry | None:
    """The entry ``stem`` in ``folder`` as recorded (not checked), or None when it has no readable record."""
    folder = Path(folder)
    try:
        record = json.loads(_record_path(folder, stem).read_text())
    except (OSError, ValueError):
        return None
    if not _well_formed(record):  # an edited or corrupt record is no record: the entry is rebuilt, not a traceback
        return None
    return Entry(folder.name, stem, record, folder)


def _well_formed(record: Any) -> bool:
    """A record as ``cached`` writes it: ``files`` maps plain file names to an int ``size`` and a str
    ``fingerprint``; ``fields`` and ``built``, when present, are objects."""
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict) or not record["files"]:
        return False
    for key in ("fields", "built"):
        if key in record and not isinstance(record[key], dict):
            return False
    for name, info in record["files"].items():
        if not name or Path(name).name != name or not isinstance(info, dict):
            return False
        if type(info.get("size")) is not int or not isinstance(info.get("fingerprint"), str):
            return False
        if "mtime_ns" in info and type(info["mtime_ns"]) is not int:
            return False
    return True


def cached(folder: str | Path, stem: str, suffixes: Iterable[str], build: Callable[[Path], None],
           fields: dict[str, Any] | None = None, say: Callable[[str], None] = print,
           what: str = "", built: dict[str, Any] | None = None) -> Path:
    """The path of entry ``<folder>/<stem><suffixes[0]>``, built by ``build`` unless a checked one is there.
    ``folder``: normally ``kind_dir(kind)``; any folder works (the record makes it an entry).

    ``build(tmp)`` must write ``tmp/<stem><suffix>`` for every suffix (e.g. ``.xml`` and ``.bin``); ``tmp`` is a
    fresh folder on the cache's file system, so the files are renamed into place whole. ``fields``: what the
    entry was built from (shown by ``deployzoo cache list``). ``what``: a few words naming the entry in messages.
    ``built``: a dict ``build`` may fill with facts about the result, kept in the record as "built".
    Raises whatever ``build`` raises (nothing is left behind then).
    """
    suffixes = list(suffixes)
    folder = Path(folder)
    main = folder / f"{stem}{suffixes[0]}"
    entry = read_entry(folder, stem)
    if entry is not None:
        problem = entry.problem()
        if problem is None:
            say(f"engine cache: reusing {what or folder.name} {main}")
            return main
        say(f"engine cache: {main.name} cannot be reused ({problem}): building it again")
    elif main.exists():
        say(f"engine cache: {main.name} has no complete record (an interrupted build?): building it again")
    problem = root_problem() if folder.is_relative_to(cache_root()) else None
    if problem:
        raise BadInputError(cache_root(), problem)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, a read-only mount, a full disk
        raise BadInputError(folder, f"cannot create the engine cache folder ({exc.strerror})") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".building-{stem[:40]}-", dir=folder))
    try:
        build(tmp)
        files = {}
        for suffix in suffixes:
            made = tmp / f"{stem}{suffix}"
            if not made.is_file():
                raise RuntimeError(f"internal error: building {stem} wrote no {made.name}")
            files[made.name] = {"size": made.stat().st_size, "fingerprint": file_fingerprint(made)}
        _record_path(folder, stem).unlink(missing_ok=True)  # the old record goes first: no stale record over new files
        for name in files:
            os.replace(tmp / name, folder / name)  # a rename keeps the modification time
            files[name]["mtime_ns"] = (folder / name).stat().st_mtime_ns
        record = {"kind": folder.name, "stem": stem, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "files": files, "fields": fields or {}, "built": built or {}}
        _write_atomically(_record_path(folder, stem), json.dumps(record, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return main


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the record from other users of a shared cache
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def entries() -> list[Entry]:
    """Every recorded entry of every kind, by kind then name."""
    found = []
    for kind in KINDS:
        folder = kind_dir(kind)
        if not folder.is_dir():
            continue
        for record in sorted(folder.glob(f"*{RECORD_SUFFIX}")):
            entry = read_entry(folder, record.name[: -len(RECORD_SUFFIX)])
            if entry is not None:
                found.append(entry)
    return found


def total_size() -> int:
    """Bytes held under the cache's kind folders (entries, leftovers of interrupted builds included)."""
    total = 0
    for kind in KINDS:
        folder = kind_dir(kind)
        if folder.is_dir():
            total += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return total


def clear(kinds: Iterable[str] = KINDS) -> tuple[int, int]:
    """Delete the kind folders (only those: ``$DEPLOYZOO_CACHE`` may point at a folder holding other things).
    Returns (files removed, bytes freed)."""
    count = size = 0
    for kind in kinds:
        folder = kind_dir(kind)
        if not folder.is_dir():
            continue
        for f in folder.rglob("*"):
            if f.is_file():
                count += 1
                size += f.stat().st_size
        shutil.rmtree(folder)
    return count, size


# --------------------------------------------------------------------------- keys


GRAPH_SOURCES = ("models", "heads", "backbones", "necks", "layers", "ops", "export")


def source_digest() -> str:
    """A digest of the deployzoo source that defines graphs (``GRAPH_SOURCES``): a graph exported by other model
    code is another entry. (Not the whole package: a change to the command line must not rebuild every graph.)"""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for folder in GRAPH_SOURCES for p in (root / folder).rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def weights_digest(loaded) -> str:
    """A digest of every tensor of ``loaded.model``'s state dict (names, shapes, dtypes, values): the same
    checkpoint in another container, or the same stand-in seed, gives the same digest. Computed once per model."""
    known = getattr(loaded, "_weights_digest", None)
    if known is not None:
        return known
    digest = hashlib.sha256()
    for name, tensor in loaded.model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(_byte_dtype()).numpy())  # raw bytes, no copy
    value = digest.hexdigest()[:16]
    loaded._weights_digest = value
    return value


def _byte_dtype():
    import torch

    return torch.uint8


def onnx_fields(loaded, batch_size: int | None, opset: int) -> dict[str, Any]:
    """What an exported graph depends on (``batch_size`` None: dynamic batch)."""
    import onnx
    import torch

    from deployzoo import __version__

    spec = loaded.spec
    return {
        "model": spec.name,
        "weights": weights_digest(loaded),
        "weights_source": loaded.weights,
        "stand_in": bool(loaded.is_stand_in),
        "batch": "dynamic" if batch_size is None else batch_size,
        "inputs": {n: [d for d in dims] for n, dims in spec.graph_input_dims().items()},
        "input_hw": list(spec.input_hw),
        # The names are written into the graph's metadata: other names (--classes) are another file.
        "class_names": list(spec.class_names),
        # Test-time settings change the graph (thresholds, detections kept) or its metadata: another file.
        **({"test_settings": dict(spec.test_settings)} if spec.test_settings else {}),
        "precision": "fp32",
        "opset": opset,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "deployzoo": __version__,
        "source": source_digest(),
    }


def _key(fields: dict[str, Any]) -> str:
    keyed = {k: v for k, v in fields.items() if k != "weights_source"}  # a path moved is the same weights
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def cached_onnx(loaded, batch_size: int = 1, dynamic_batch: bool = False, say: Callable[[str], None] = print):
    """The fp32 ONNX of ``loaded`` (an engine.LoadedModel) at ``batch_size`` (or a dynamic batch), exported into
    the cache once and reused afterwards. Returns an export.onnx_export.ExportResult whose path is in the cache.
    Raises what export_onnx raises (DeployzooError when the checker fails)."""
    from deployzoo.export.onnx_export import DEFAULT_OPSET, ExportResult, export_onnx

    spec = loaded.spec
    fields = onnx_fields(loaded, None if dynamic_batch else batch_size, DEFAULT_OPSET)
    stem = f"{spec.name}-b{'dyn' if dynamic_batch else batch_size}-fp32-{_key(fields)}"
    built: dict[str, Any] = {}

    def build(tmp: Path) -> None:
        say(f"exporting {spec.name} to ONNX (batch {'dynamic' if dynamic_batch else batch_size}) into the engine "
            f"cache {kind_dir('onnx')}")
        result = export_onnx(loaded.model, spec, tmp / f"{stem}.onnx", batch_size=batch_size,
                             dynamic_batch=dynamic_batch, extra_metadata={"deployzoo.weights": loaded.weights})
        built.update(opset=result.opset, ir_version=result.ir_version, op_types=result.op_types)

    path = cached(kind_dir("onnx"), stem, [".onnx"], build, fields, say=say, what="ONNX", built=built)
    if not built:  # reused: what the exporter reported then is in the record
        entry = read_entry(kind_dir("onnx"), stem)
        built = (entry.record.get("built") if entry else None) or _describe_onnx(path)
    export = built
    return ExportResult(path=path, opset=export["opset"], ir_version=export["ir_version"],
                        batch=None if dynamic_batch else batch_size, op_types=export["op_types"],
                        size_bytes=path.stat().st_size)


def _describe_onnx(path: Path) -> dict[str, Any]:
    import onnx

    from deployzoo.export.onnx_export import op_type_counts

    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return {"opset": opset, "ir_version": proto.ir_version, "op_types": op_type_counts(proto)}


def backend_cache_dir(backend: str) -> Path | None:
    """The cache folder of a backend's compiled artifacts (OpenVINO IR, AOTInductor packages), or None."""
    return {"openvino": kind_dir("openvino"), "pytorch-aoti": kind_dir("aoti")}.get(backend)


def listing(width: int = 100) -> str:
    """``deployzoo cache list``: where the cache is, one line per entry (kind, size, what it was built from, its
    state), and the total; lines fit ``width`` columns."""
    root = cache_root()
    found = entries()
    lines = [f"engine cache ({'set by $' + CACHE_ENV if os.environ.get(CACHE_ENV) else 'default location'}, "
             f"{total_size() / 1e6:.1f} MB):", f"  {root}"]
    problem = root_problem()
    if problem:
        lines.append(f"  warning: {root}: {problem}")
    if not found:
        return "\n".join(lines + ["  (empty)"])
    lines.append(f"  {'kind':<8} {'MB':>7}  {'state':<6} entry")
    for e in found:
        fields = e.record.get("fields", {})
        what = fields.get("model") or fields.get("onnx", "")
        if "batch" in fields:
            what += f", batch {fields['batch']}" + (", stand-in weights" if fields.get("stand_in") else "")
        if "device" in fields:  # AOTInductor packages
            what += f", {fields.get('precision', '?')} on {fields['device']}"
        if fields.get("test_settings"):
            what += ", " + ", ".join(f"{k} {v}" for k, v in sorted(fields["test_settings"].items()))
        state = "ok" if e.problem() is None else "broken"
        lines.append(f"  {e.kind:<8} {e.size_bytes / 1e6:>7.1f}  {state:<6} {_cut(e.stem, width - 27)}")
        if what:
            lines.append(f"  {'':<8} {'':>7}  {'':<6} {_cut(str(what), width - 27)}")
    return "\n".join(lines)


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else "..." + text[-(n - 3):]
