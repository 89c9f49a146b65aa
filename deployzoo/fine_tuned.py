"""Fine-tuned checkpoints: the model spec for a checkpoint's own class count and class names.

The class count comes strictly from the checkpoint's head tensors (deployzoo.checkpoints.head_classes); the
names, in this order of precedence (issue 17):

1. the checkpoint's own metadata: mmdetection / mmsegmentation 3.x / 1.x ``meta.dataset_meta.classes``, 2.x /
   0.x ``meta.CLASSES``;
2. ``--classes a,b,c`` or ``--classes FILE`` (one name per line);
3. the dataset's categories (COCO ``categories``, in id order);
4. the model's official names when the count is the official one, else ``class_0 .. class_{N-1}`` (said so).

A count that disagrees with the names is one error naming both. The resulting ModelSpec (same registry name,
same graph contract) builds the model with ``num_classes`` as a plain constructor argument; its class names go
to predictions.json, reports and the ONNX metadata; COCO category ids are the dataset's own (matched by name).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from deployzoo.errors import BadInputError, CheckpointError, DeployzooError

__all__ = ["ClassSetup", "checkpoint_class_names", "generic_class_names", "parse_classes", "read_checkpoint",
           "resolve_classes", "spec_for"]


def generic_class_names(num_classes: int) -> tuple[str, ...]:
    """``("class_0", ..., "class_{N-1}")``: names for a class count nothing names."""
    return tuple(f"class_{i}" for i in range(num_classes))


# a --classes value ending so is a file name, never a class name
_LIST_SUFFIXES = (".txt", ".names", ".csv", ".lst", ".list", ".json", ".yaml", ".yml")


def parse_classes(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``--classes``: a comma-separated list, or a file with one name per line (blank lines skipped).

    Raises:
        BadInputError: an empty list, an empty name, or a name given twice (naming the file or the option); a
            value that is a path (a folder, or no comma and a ``/`` or a list-file suffix such as ``.txt``) but
            not a readable file.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        names, where = [str(n).strip() for n in text], "the class list"
    elif Path(text).is_file():
        try:
            lines = Path(text).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(text, f"cannot read the class list ({exc})") from exc
        names, where = [line.strip() for line in lines if line.strip()], text
    elif "," not in text and (Path(text).is_dir() or "/" in text or "\\" in text
                              or Path(text).suffix.lower() in _LIST_SUFFIXES):
        # a path that is not a readable file: taken as one class name it would fail later, blaming the data
        raise BadInputError(text, "class list file not found" if not Path(text).exists()
                            else "is a folder, not a class list file (one name per line)" if Path(text).is_dir()
                            else "not a regular file (a named pipe, socket or device), not a class list file")
    else:
        names, where = [n.strip() for n in text.split(",")], "--classes"
    if not names or any(not n for n in names):
        raise BadInputError(where, f"expected class names (comma-separated, or a file with one name per line), "
                                   f"got {text!r}")
    seen: set[str] = set()
    twice = [n for n in names if n in seen or seen.add(n)]
    if twice:
        raise BadInputError(where, f"class name(s) given twice: {', '.join(twice)}")
    return tuple(names)


def checkpoint_class_names(meta: dict[str, Any]) -> tuple[tuple[str, ...], str] | None:
    """(names, where) from a checkpoint's metadata (``RawCheckpoint.meta``), or None when it names none.

    mmengine (mmdet 3.x, mmseg 1.x): ``meta.dataset_meta.classes``; mmcv (mmdet 2.x, mmseg 0.x): ``meta.CLASSES``.
    """
    inner = meta.get("meta") if isinstance(meta.get("meta"), dict) else {}
    dataset_meta = inner.get("dataset_meta") if isinstance(inner.get("dataset_meta"), dict) else {}
    for value, where in ((dataset_meta.get("classes"), "meta.dataset_meta.classes"),
                         (inner.get("CLASSES"), "meta.CLASSES")):
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return tuple(value), where
    return None


def _usable_meta_names(named: tuple[tuple[str, ...], str] | None, count: int,
                       path: str | Path) -> tuple[tuple[str, ...], str] | None:
    """``named`` when it names ``count`` classes; else None, with a warning naming both counts.

    Why not an error: the head tensors decide what the model computes, and the frameworks themselves run such a
    file (mmdet's init_detector copies meta CLASSES for display only), so the names are dropped, not the run;
    --classes names the classes instead (a --classes count that disagrees with the heads is still an error)."""
    if named is None or len(named[0]) == count:
        return named
    import sys

    shown = ", ".join(named[0][:5]) + (", ..." if len(named[0]) > 5 else "")
    print(f"warning: {path}: its {named[1]} names {len(named[0])} class(es) ({shown}) but the head tensors have "
          f"{count}; those names are not used (give --classes to name the classes)", file=sys.stderr)
    return None


@lru_cache(maxsize=1)
def _read_cached(path: str, mtime_ns: int, size: int):
    from deployzoo.checkpoints.safe_load import load_checkpoint

    return load_checkpoint(path)


def read_checkpoint(path: str | Path):
    """``safe_load.load_checkpoint`` with the last file kept, so resolving the spec and loading the weights read
    a (250 MB) checkpoint once. Keyed by path, modification time and size."""
    p = Path(path)
    try:
        stat = p.stat()
    except OSError:
        from deployzoo.checkpoints.safe_load import load_checkpoint

        return load_checkpoint(path)  # its own error for a missing / unreadable file
    return _read_cached(str(p), stat.st_mtime_ns, stat.st_size)


@dataclass(frozen=True)
class ClassSetup:
    """What was decided: the count, where it came from (a ClassCount or a phrase), the names and their source."""

    num_classes: int
    count_from: str  # "3 classes, inferred from <tensor> <shape>", or e.g. "--classes"
    names: tuple[str, ...]
    names_from: str  # "checkpoint meta.CLASSES", "--classes", "dataset categories", "official", "generic"

    def describe(self) -> str:
        names = ", ".join(self.names[:6]) + (" ..." if len(self.names) > 6 else "")
        return f"{self.count_from}; class names from {self.names_from}: {names}"


def _dataset_categories(spec, data: str | Path | None, annotations: str | Path | None) -> list[dict] | None:
    """The COCO ``categories`` of the dataset a COCO-judged spec will run on (sorted by id), or None."""
    from deployzoo.tasks.coco_detection import COCODetectionTask

    if not isinstance(spec.evaluation, COCODetectionTask) or (data is None and annotations is None):
        return None
    path = Path(annotations) if annotations is not None else Path(data) / "annotations" / \
        f"instances_{spec.evaluation.split}.json"
    if not path.is_file():
        return None  # the dataset check names the missing file later
    try:
        cats = json.loads(path.read_text(encoding="utf-8")).get("categories")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None  # likewise: the dataset check reports a broken file with its own message
    if not isinstance(cats, list) or not all(isinstance(c, dict) and isinstance(c.get("id"), int)
                                             and isinstance(c.get("name"), str) for c in cats):
        return None
    return sorted(cats, key=lambda c: c["id"])


def resolve_classes(spec, checkpoint: str | Path | None = None, classes: str | Sequence[str] | None = None,
                    onnx: str | Path | None = None, categories: list[dict] | None = None) -> ClassSetup | None:
    """The class setup for ``spec`` with these inputs, or None when nothing changes the official one.

    Raises:
        CheckpointError: head tensors that disagree (deployzoo.checkpoints.head_classes).
        BadInputError / DeployzooError: a name count that is not the class count, naming both.
    """
    from deployzoo.checkpoints.head_classes import infer_num_classes

    official = len(spec.class_names)
    given = parse_classes(classes)
    count, count_from = None, ""
    meta_names = None
    if checkpoint is not None and spec.class_heads:
        raw = read_checkpoint(checkpoint)
        found = infer_num_classes(raw.tensors, spec.class_heads, str(checkpoint))
        if found is not None:
            count, count_from = found.num_classes, found.describe()
        meta_names = _usable_meta_names(checkpoint_class_names(raw.meta), count or official, checkpoint)
    elif onnx is not None:
        from deployzoo.export.onnx_export import read_metadata

        try:
            metadata = read_metadata(onnx)
            # A file exported for another model is refused by the ONNX check (naming both); its names say
            # nothing about this model, so no note about them comes before that error.
            foreign = metadata.get("deployzoo.model", spec.name) != spec.name
            stored = None if foreign else json.loads(metadata.get("deployzoo.class_names", "null"))
        except (OSError, ValueError, Exception):  # noqa: BLE001 - the ONNX check names a bad file itself
            stored = None
        if isinstance(stored, list) and stored and all(isinstance(n, str) for n in stored):
            count, count_from = len(stored), f"{len(stored)} classes, from the class names in {onnx}'s metadata"
            # Generic names stored at export (nothing named the classes then) do not outrank --classes.
            if tuple(stored) not in (tuple(spec.class_names), generic_class_names(len(stored))):
                meta_names = (tuple(stored), f"{onnx}'s metadata")
    elif given is not None and spec.class_heads:
        count, count_from = len(given), f"{len(given)} classes, from --classes (stand-in weights)"
    if count is None:
        count, count_from = official, f"{official} classes (the official model)"

    names, names_from = None, ""
    if meta_names is not None:
        names, names_from = meta_names[0], f"checkpoint {meta_names[1]}" if checkpoint is not None else meta_names[1]
        if given is not None and given != names:
            if len(given) != len(names):
                raise DeployzooError(f"--classes gives {len(given)} names ({', '.join(given)}) but the checkpoint's "
                                     f"{meta_names[1]} has {len(names)} ({', '.join(names)})")
            print(f"note: the class names stored in the model ({names_from}) are used, not --classes")
    elif given is not None:
        names, names_from = given, "--classes"
    elif categories is not None and len(categories) == count and count != official:
        names, names_from = tuple(c["name"] for c in categories), "the dataset's categories"
    if names is not None and len(names) != count:
        raise DeployzooError(f"{count_from}, but the class names ({names_from}) are {len(names)}: "
                             f"{', '.join(names)}")
    if names is None:
        if count == official:
            return None
        names, names_from = generic_class_names(count), "nowhere (generic names class_0..class_N-1: give --classes)"
    if count == official and tuple(names) == tuple(spec.class_names):
        return None
    return ClassSetup(count, count_from, tuple(names), names_from)


def _category_ids(names: tuple[str, ...], categories: list[dict] | None, where: str) -> tuple[int, ...] | None:
    """Each class's dataset category id, matched by name; None without a dataset (ids = index + 1)."""
    if categories is None:
        return None
    by_name = {c["name"]: c["id"] for c in categories}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise BadInputError(where, f"the model's class(es) {', '.join(missing)} are not among the dataset's "
                                   f"categories ({', '.join(sorted(by_name))})")
    return tuple(int(by_name[n]) for n in names)


def with_classes(spec, setup: ClassSetup, categories: list[dict] | None = None, where: str = "dataset"):
    """``spec`` built for ``setup``: ``spec.class_variant(num_classes)`` with the names, category ids and
    evaluation that follow from them."""
    from deployzoo.tasks import custom

    official_names = tuple(spec.class_names)
    if setup.num_classes != len(spec.class_names):
        if spec.class_variant is None:
            raise CheckpointError(f"{spec.name} has no variant for another class count ({setup.describe()})")
        spec = spec.class_variant(setup.num_classes)
    category_ids = _category_ids(setup.names, categories, where)
    evaluation = custom.task_for_classes(spec.evaluation, setup.names,
                                         category_ids or tuple(range(1, setup.num_classes + 1)))
    published = spec.published
    if tuple(setup.names) != tuple(official_names) and published is not None and published.value is not None:
        # the official checkpoint's figure is on the official classes: beside a fine-tuned model's mAP it read as
        # a comparison (eval printed "published figure of the trained model: 79.81" for a 3-class model)
        published = dataclasses.replace(published, value=None, source=(
            f"a fine-tuned model on its own {setup.num_classes} classes has none; the official checkpoint's "
            f"{published.value} is on the official classes ({published.source})"))
    return dataclasses.replace(spec, class_names=setup.names, class_names_source=setup.names_from,
                               category_ids=category_ids, evaluation=evaluation, published=published)


def spec_for(spec, checkpoint: str | Path | None = None, classes: str | Sequence[str] | None = None,
             onnx: str | Path | None = None, data: str | Path | None = None, annotations: str | Path | None = None,
             images: str | Path | None = None, quiet: bool = False, settings: dict | None = None):
    """The spec to run ``spec`` with these inputs: the checkpoint's class count and names, the dataset's own
    category ids, and the custom COCO layout (``annotations`` file, ``images`` folder). The official spec,
    unchanged, when nothing differs. ``settings``: test-time settings (deployzoo.test_settings.check_settings
    keywords: input_size, max_size, score_threshold, max_dets); an ``onnx`` file brings its own (refused when
    ``settings`` asks for others)."""
    from deployzoo.tasks import custom
    from deployzoo.test_settings import check_settings, with_settings

    given = {k: v for k, v in (settings or {}).items() if v is not None}
    changed = check_settings(spec, **given) if given else {}
    if onnx is not None:
        changed = _onnx_settings(spec, onnx, given, changed)

    categories = _dataset_categories(spec, data, annotations)
    setup = resolve_classes(spec, checkpoint, classes, onnx, categories)
    if setup is not None:
        if not quiet:
            print(f"note: {setup.describe()}")
        where = str(annotations or data or "dataset")
        # The official names on the official dataset keep COCO's own category table.
        spec = with_classes(spec, setup, categories if setup.names != tuple(spec.class_names) else None, where)
    if annotations is not None or images is not None:
        spec = dataclasses.replace(spec, evaluation=custom.with_layout(spec.evaluation, annotations, images))
    if changed:
        spec = with_settings(spec, changed)
        if not quiet:
            from deployzoo.test_settings import describe

            print(f"note: {describe(spec)}")
    return spec


def _onnx_settings(spec, onnx, given: dict, changed: dict) -> dict:
    """The test settings an exported file was made with; options asking for others are refused."""
    from deployzoo.export.onnx_export import read_metadata
    from deployzoo.test_settings import check_settings, from_metadata, reconcile

    try:
        metadata = read_metadata(onnx)
    except Exception:  # noqa: BLE001 - the ONNX check names a bad file itself
        return changed
    if metadata.get("deployzoo.model", spec.name) != spec.name:
        return changed  # another model's file: refused by the ONNX check, naming both
    if "deployzoo.model" not in metadata:
        # A file made elsewhere records no settings: nothing to hold the options against, so they are used as
        # given (the host's resize follows them; what its graph does after the image is its own).
        if given:
            print(f"note: {onnx} has no deployzoo metadata, so nothing says which test-time settings it was made "
                  f"with: the options given are used")
        return changed
    stored = from_metadata(spec, metadata, str(onnx))
    return reconcile(spec, check_settings(spec, **given, keep_official=True) if given else {}, stored, str(onnx))


def setup_for_loaded(spec, raw) -> ClassSetup | None:
    """For ``engine.load_model`` given the official spec and a fine-tuned checkpoint: the count from the head
    tensors, the names from its metadata (else generic). None when it is the official count."""
    from deployzoo.checkpoints.head_classes import infer_num_classes

    if not spec.class_heads:
        return None
    found = infer_num_classes(raw.tensors, spec.class_heads, str(raw.path))
    if found is None or found.num_classes == len(spec.class_names):
        return None
    named = _usable_meta_names(checkpoint_class_names(raw.meta), found.num_classes, raw.path)
    if named is not None:
        return ClassSetup(found.num_classes, found.describe(), named[0], f"checkpoint {named[1]}")
    return ClassSetup(found.num_classes, found.describe(), generic_class_names(found.num_classes),
                      "nowhere (generic names class_0..class_N-1: give --classes)")
