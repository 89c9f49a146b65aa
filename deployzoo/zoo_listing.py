"""``deployzoo models``: the zoo grouped by architecture, each with its registry names and variants, in at most
100 columns; ``--wide`` adds every column (checkpoint file format), ``--json`` gives it all machine-readable."""
from __future__ import annotations

import importlib
import re
from typing import Any

WIDTH = 100

# What a suffix variant changes, in a few words (the spec's module docstring says it at length).
VARIANT_NOTES = {
    "-v3post": "mmdetection 3.x post-processing (algorithm B)",
    "-labels": "graph outputs the label map (argmax, resize inside)",
}


def _family(name: str) -> tuple[str, str]:
    """(module name, architecture title) of registry name ``name``: the title is the opening words of the
    docstring of the model module the registry points to."""
    from deployzoo.registry import _ZOO

    module_name = _ZOO[name].split(":")[0]
    module = importlib.import_module(module_name)
    doc = (module.__doc__ or name).strip().splitlines()[0]
    title = re.split(r" from | \(|:", doc)[0].strip() or name
    return module_name, title


def _framework(spec: Any) -> str:
    return spec.checkpoint_format.split(" ")[0].rstrip(":") if spec.checkpoint_format else "?"


def _entries() -> list[dict[str, Any]]:
    from deployzoo.registry import get_spec, model_names

    rows = []
    names = model_names()
    for name in names:
        spec = get_spec(name)
        module_name, title = _family(name)
        base = next((other for other in names if other != name and name.startswith(other + "-")), None)
        suffix = name[len(base):] if base else None
        rows.append({
            "name": name, "architecture": title, "module": module_name, "framework": _framework(spec),
            "task": spec.task, "dataset": spec.dataset, "input_hw": list(spec.input_hw),
            "published": {"metric": spec.published.metric, "value": spec.published.value,
                          "source": spec.published.source},
            "checkpoint_format": spec.checkpoint_format, "variant_of": base,
            "variant": (VARIANT_NOTES.get(suffix) or f"outputs {', '.join(spec.output_names)}") if base else None,
            "fixed_canvas": bool(spec.canvas_variant) or hasattr(importlib.import_module(module_name), "make_spec"),
            "outputs": list(spec.output_names),
        })
    return rows


def as_json() -> list[dict[str, Any]]:
    """Every registered model with every fact the listing shows (``--json``)."""
    return _entries()


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(0, n - 3)] + "..."


def listing(wide: bool = False) -> str:
    """The text of ``deployzoo models`` (every line <= 100 columns unless ``wide``)."""
    rows = _entries()
    name_w = max(len(r["name"]) for r in rows)
    task_w = max(len(r["task"]) for r in rows)
    lines = [f"{len({r['module'] for r in rows})} architectures, {len(rows)} registry names "
             "(give the name to predict, eval, run ...):"]
    families: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault(r["module"], []).append(r)
    for group in families.values():
        head = group[0]
        title = f"{head['architecture']}  ({head['framework']} checkpoint; scored on {head['dataset']})"
        lines += ["", title if wide else _cut(title, WIDTH)]
        for r in group:
            published = f"{r['published']['metric']} {r['published']['value']}"
            if r["variant_of"]:
                text = f"  {r['name']:<{name_w}}  variant: {r['variant']}"
            else:
                text = (f"  {r['name']:<{name_w}}  {r['task']:<{task_w}}  "
                        f"{r['input_hw'][0]}x{r['input_hw'][1]:<5}  {published}")
            lines.append(text if wide else _cut(text, WIDTH))
            if wide:
                lines.append(f"  {'':<{name_w}}  checkpoint: {r['checkpoint_format']}")
    canvas = [r["architecture"] for r in rows if r["fixed_canvas"] and not r["variant_of"]]
    fixed = [r["architecture"] for r in rows if not r["fixed_canvas"] and not r["variant_of"]]
    lines += [""]
    notes = ["input: the network input (HxW) of the default export; published: the trained model's figure."]
    if canvas:
        notes.append("Fixed-canvas graphs: NAME@HxW (e.g. mmdet-mask-rcnn-r50-fpn-1x@800x1216)"
                     + (f"; not {', '.join(fixed)}" if fixed else "") + ".")
    notes.append("--wide adds each checkpoint's file format; --json gives everything machine-readable.")
    for note in notes:
        lines += _wrap(note, WIDTH) if not wide else [note]
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]
