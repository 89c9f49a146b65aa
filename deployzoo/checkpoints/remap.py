"""Map a checkpoint's keys onto a model's state dict, strictly, and say what was done.

Official checkpoints name their weights after the training codebase's modules
(``backbone.res2.0.conv1.weight``); deployzoo's models use their own names. A
:class:`RenameRules` per model states the translation, and :func:`remap_state_dict`
applies it and refuses anything that does not fit exactly: a silently skipped or
half-loaded weight shows up much later as a mysterious accuracy drop, so every
problem is reported at once, in one error, with every key named.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deployzoo.checkpoints.safe_load import RawCheckpoint, load_checkpoint
from deployzoo.errors import CheckpointError

__all__ = ["MappingEntry", "MappingReport", "RenameRules", "load_into_model", "remap_state_dict"]

Tensor = torch.Tensor
Shape = tuple[int, ...]


@dataclass
class RenameRules:
    """How one family of checkpoints maps onto one deployzoo model.

    Semantics, applied to every checkpoint key (after ``module.`` stripping):

    1. ``ignore``: ``(pattern, reason)`` pairs. If any pattern ``re.fullmatch``-es the
       checkpoint key, the key is deliberately unused (e.g. training-only heads) and
       the reason shows in the report. Ignoring wins over renaming.
    2. ``renames``: ``(pattern, replacement)`` pairs, tried in order. The first pattern
       that ``re.fullmatch``-es the key renames it to ``match.expand(replacement)``
       (so ``\\1`` / ``\\g<name>`` work) and no later rule is tried. A key no rule
       matches keeps its name. Rules do not chain: write the full target name.
    3. ``transforms``: model key -> ``fn(tensor) -> tensor``, applied to the renamed
       tensor before its shape is checked, for layout fixes such as flipping a first
       conv's input channels from BGR to RGB. A transform for a key the model lacks
       is an error (a typo there would otherwise skip the fix silently).
    4. ``keep_init``: ``(pattern, reason)`` pairs on *model* keys that the checkpoint
       may legitimately lack (e.g. BatchNorm ``num_batches_tracked`` in detectron2
       pickles); such keys keep the model's current value. Every other model key
       must be filled.
    """

    renames: list[tuple[str, str]] = field(default_factory=list)
    ignore: list[tuple[str, str]] = field(default_factory=list)
    transforms: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)
    keep_init: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Catch a bad regex when the rules are defined, not on the first user's load.
        for group in ("renames", "ignore", "keep_init"):
            for pattern, _ in getattr(self, group):
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ValueError(f"RenameRules.{group}: bad pattern {pattern!r}: {e}") from e

    def ignore_reason(self, checkpoint_key: str) -> str | None:
        """The reason ``checkpoint_key`` is ignored, or None if it is not."""
        return _first_reason(self.ignore, checkpoint_key)

    def keep_init_reason(self, model_key: str) -> str | None:
        """The reason ``model_key`` may keep its initial value, or None."""
        return _first_reason(self.keep_init, model_key)

    def rename(self, checkpoint_key: str) -> str:
        """The model key for ``checkpoint_key``: first full-matching rule wins."""
        for pattern, replacement in self.renames:
            match = re.fullmatch(pattern, checkpoint_key)
            if match is not None:
                try:
                    return match.expand(replacement)
                except (re.error, IndexError) as e:
                    raise ValueError(
                        f"RenameRules.renames: replacement {replacement!r} for {pattern!r}: {e}"
                    ) from e
        return checkpoint_key


def _first_reason(rules: list[tuple[str, str]], key: str) -> str | None:
    for pattern, reason in rules:
        if re.fullmatch(pattern, key):
            return reason
    return None


# --------------------------------------------------------------------------- report


@dataclass
class MappingEntry:
    """One row of the mapping: where a tensor came from, where it went, and how.

    ``action`` is ``"copied"`` (same name), ``"renamed"``, ``"ignored: <reason>"`` or
    ``"kept model init: <reason>"``. ``note`` records extra steps, e.g.
    ``"transformed"`` or ``"float64 -> float32"``.
    """

    checkpoint_key: str | None
    model_key: str | None
    shape: Shape
    action: str
    note: str = ""


@dataclass
class MappingReport:
    """What :func:`remap_state_dict` did with every checkpoint and model key."""

    source: str
    entries: list[MappingEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # A fine-tuned checkpoint's class count and names: "3 classes, inferred from <tensor> [4, 1024]; ..."
    classes: str = ""

    @property
    def counts(self) -> dict[str, int]:
        """Summary counts by action, plus checkpoint/model totals."""
        actions = [e.action for e in self.entries]
        return {
            "checkpoint_tensors": sum(e.checkpoint_key is not None for e in self.entries),
            "model_tensors": sum(e.model_key is not None for e in self.entries),
            "copied": actions.count("copied"),
            "renamed": actions.count("renamed"),
            "ignored": sum(a.startswith("ignored") for a in actions),
            "kept_init": sum(a.startswith("kept model init") for a in actions),
            "transformed": sum("transformed" in e.note for e in self.entries),
            "cast": sum("->" in e.note for e in self.entries),
        }

    def format(self, verbose: bool = False) -> str:
        """A one-line summary; with ``verbose``, also every key's row and the notes."""
        c = self.counts
        parts = [f"{c['copied']} copied", f"{c['renamed']} renamed", f"{c['ignored']} ignored"]
        if c["kept_init"]:
            parts.append(f"{c['kept_init']} kept at model init")
        if c["transformed"]:
            parts.append(f"{c['transformed']} transformed")
        if c["cast"]:
            parts.append(f"{c['cast']} dtype-cast")
        summary = (
            f"{self.source or 'checkpoint'}: {c['model_tensors']} model tensors from "
            f"{c['checkpoint_tensors']} checkpoint tensors ({', '.join(parts)})"
        )
        if self.classes:
            summary += f"\n{self.classes}"
        if not verbose:
            return summary
        lines = [summary, *(f"note: {n}" for n in self.notes)]
        rows = [("action", "checkpoint key", "model key", "shape", "note")]
        rows += [
            (e.action, e.checkpoint_key or "-", e.model_key or "-", _shape_str(e.shape), e.note)
            for e in self.entries
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            cells = [cell.ljust(w) for cell, w in zip(row[:4], widths)] + [row[4]]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (shapes as lists) for run records."""
        return {
            "source": self.source,
            "counts": self.counts,
            "notes": list(self.notes),
            **({"classes": self.classes} if self.classes else {}),
            "entries": [
                {
                    "checkpoint_key": e.checkpoint_key,
                    "model_key": e.model_key,
                    "shape": list(e.shape),
                    "action": e.action,
                    "note": e.note,
                }
                for e in self.entries
            ],
        }


def _shape_str(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# --------------------------------------------------------------------------- remap


def remap_state_dict(
    checkpoint: Mapping[str, Tensor],
    model_state: Mapping[str, Tensor],
    rules: RenameRules,
    source: str = "",
) -> tuple[dict[str, Tensor], MappingReport]:
    """Rename, filter and check ``checkpoint`` against ``model_state``.

    Returns the state dict to hand to ``model.load_state_dict(..., strict=True)`` and a
    report of every key. Floating tensors are cast to the model's dtype (float64
    numpy weights become float32); integer tensors stay integer (cast only between
    integer dtypes).

    Raises:
        CheckpointError: one error listing every problem, grouped: model keys left
            missing, checkpoint keys with no place in the model, shape mismatches,
            several checkpoint keys landing on one model key, float/int mismatches,
            and rule problems (bad transform). ``source`` names the file in it.
    """
    report = MappingReport(source=source)
    problems = _Problems(source)

    # Route every checkpoint key: ignored, or onto a (possibly renamed) model key.
    targets: dict[str, list[str]] = {}
    for ckpt_key, tensor in checkpoint.items():
        reason = rules.ignore_reason(ckpt_key)
        if reason is not None:
            report.entries.append(MappingEntry(ckpt_key, None, tuple(tensor.shape), f"ignored: {reason}"))
            continue
        targets.setdefault(rules.rename(ckpt_key), []).append(ckpt_key)

    for model_key in rules.transforms:
        if model_key not in model_state:
            problems.rules.append(f"transform given for {model_key!r}, which the model does not have")

    mapped: dict[str, Tensor] = {}
    for model_key, ckpt_keys in targets.items():
        if len(ckpt_keys) > 1:
            problems.duplicates.append(f"{model_key}  <-  " + ", ".join(ckpt_keys))
            continue
        ckpt_key = ckpt_keys[0]
        tensor = checkpoint[ckpt_key]
        renamed = ckpt_key != model_key
        if model_key not in model_state:
            problems.unexpected.append((ckpt_key, model_key, tuple(tensor.shape), renamed))
            continue
        target = model_state[model_key]
        notes: list[str] = []
        transform = rules.transforms.get(model_key)
        if transform is not None:
            try:
                tensor = transform(tensor)
            except Exception as e:  # noqa: BLE001 - reported with the other problems
                problems.rules.append(f"transform for {model_key!r} failed: {type(e).__name__}: {e}")
                continue
            if not isinstance(tensor, Tensor):
                problems.rules.append(f"transform for {model_key!r} returned {type(tensor).__name__}, not a tensor")
                continue
            notes.append("transformed")
        origin = f"{ckpt_key} -> {model_key}" if renamed else model_key
        if tuple(tensor.shape) != tuple(target.shape):
            problems.misshaped.append(
                f"{origin}: checkpoint {_shape_str(tuple(tensor.shape))} vs model {_shape_str(tuple(target.shape))}"
            )
            continue
        cast = _cast_to_model(tensor, target)
        if cast is None:
            problems.dtypes.append(f"{origin}: checkpoint {tensor.dtype} vs model {target.dtype}")
            continue
        if cast.dtype != tensor.dtype:
            notes.append(f"{_dtype_name(tensor.dtype)} -> {_dtype_name(cast.dtype)}")
        mapped[model_key] = cast
        action = "renamed" if renamed else "copied"
        report.entries.append(MappingEntry(ckpt_key, model_key, tuple(target.shape), action, ", ".join(notes)))

    for model_key, target in model_state.items():
        if model_key in targets:
            continue  # filled, or already reported as duplicate / mis-shaped / bad dtype
        reason = rules.keep_init_reason(model_key)
        if reason is None:
            problems.missing.append((model_key, tuple(target.shape)))
            continue
        mapped[model_key] = target.detach()
        report.entries.append(MappingEntry(None, model_key, tuple(target.shape), f"kept model init: {reason}"))

    problems.raise_if_any(model_state)
    return mapped, report


def _cast_to_model(tensor: Tensor, target: Tensor) -> Tensor | None:
    """``tensor`` in the model's dtype, or None when the kinds differ (float vs int)."""
    if _kind(tensor.dtype) != _kind(target.dtype):
        return None
    return tensor if tensor.dtype == target.dtype else tensor.to(target.dtype)


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "float"
    return "int"  # integers and bool: buffers such as num_batches_tracked or masks


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_SHOWN_KEYS = 5  # keys of each kind a mapping error shows without --verbose


@dataclass
class _Problems:
    """Collects every mismatch so they are raised together in one readable error."""

    source: str
    missing: list[tuple[str, Shape]] = field(default_factory=list)
    unexpected: list[tuple[str, str, Shape, bool]] = field(default_factory=list)
    misshaped: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)

    def raise_if_any(self, model_state: Mapping[str, Tensor]) -> None:
        groups = self._groups()
        total = sum(len(lines) for _, _, lines in groups)
        if not total:
            return
        counts = ", ".join(f"{len(lines)} {short}" for short, _, lines in groups if lines)
        header = (f"{self.source or 'checkpoint'}: does not fit the model ({total} problem"
                  f"{'s' if total != 1 else ''}: {counts}; the model has {len(model_state)} keys)")
        # The message shows the first few keys of each kind; ``details`` (printed with --verbose) has them all.
        summary, full = [header], [header]
        for short, title, lines in groups:
            if lines:
                shown = lines if len(lines) <= _SHOWN_KEYS + 2 else lines[:_SHOWN_KEYS]
                summary.append(f"{short} ({len(lines)}) - {title}:")
                summary.extend(f"  - {line}" for line in shown)
                if len(shown) < len(lines):
                    summary.append(f"  ... and {len(lines) - len(shown)} more (--verbose lists every key)")
                full.append(f"{short} ({len(lines)}) - {title}:")
                full.extend(f"  - {line}" for line in lines)
        full.append("If this is the model's own checkpoint, its RenameRules (renames / ignore / keep_init) need fixing.")
        error = CheckpointError("\n".join(summary))
        error.details = "\n".join(full)
        raise error

    def _groups(self) -> list[tuple[str, str, list[str]]]:
        """(short name, explanation, one line per key) for each kind of problem."""
        missing_keys = [key for key, _ in self.missing]
        missing = [f"{key}  {_shape_str(shape)}" for key, shape in self.missing]
        unexpected = []
        for ckpt_key, model_key, shape, renamed in self.unexpected:
            line = f"{ckpt_key} -> {model_key}" if renamed else ckpt_key
            line += f"  {_shape_str(shape)}"
            # A near-identical missing key usually means one rename rule is needed.
            close = difflib.get_close_matches(model_key, missing_keys, n=1, cutoff=0.8)
            if close:
                line += f"  (close to missing {close[0]})"
            unexpected.append(line)
        return [
            ("missing", "model keys the checkpoint does not fill", missing),
            ("unexpected", "checkpoint keys with no place in the model", unexpected),
            ("mis-shaped", "checkpoint shape differs from the model's", self.misshaped),
            ("duplicates", "several checkpoint keys map to one model key", self.duplicates),
            ("dtype", "float vs integer mismatch", self.dtypes),
            ("rules", "problems in the RenameRules themselves", self.rules),
        ]


# --------------------------------------------------------------------------- load


def load_into_model(
    model: torch.nn.Module,
    checkpoint: str | Path | RawCheckpoint,
    rules: RenameRules | None = None,
) -> MappingReport:
    """Read ``checkpoint`` safely, map it with ``rules`` and load it with ``strict=True``.

    ``checkpoint`` is a path or an already-read :class:`RawCheckpoint`. Returns the
    mapping report (the loader's notes included). Raises :class:`CheckpointError`.
    """
    raw = checkpoint if isinstance(checkpoint, RawCheckpoint) else load_checkpoint(checkpoint)
    source = str(raw.path)
    mapped, report = remap_state_dict(raw.tensors, model.state_dict(), rules or RenameRules(), source)
    report.notes = [f"format: {raw.format}", *raw.notes, *report.notes]
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as e:  # checked above, so only model-specific hooks get here
        raise CheckpointError(f"{source}: load_state_dict failed after mapping: {e}") from e
    return report
