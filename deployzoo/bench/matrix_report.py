"""Reports for ``deployzoo matrix``: models x backends x precisions x batch sizes.

A cell is a plain JSON-safe dict (model, backend, precision, batch_size, status, error, stats,
samples_ms, guard, overhead, backend_info, seconds). Latencies are ms per batch and throughput
is images/s, both pure inference on a host latency basis (inputs already in host memory).
matplotlib is imported only by the plotting functions so importing this module stays cheap.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from deployzoo.bench.report import write_csv, write_json

NOTE_CHARS = 120
_PERCENTILES = ("p50_ms", "p90_ms", "p99_ms")
_VALUE_KEYS = ("throughput", "min_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "cv")
_GUARD_KEYS = ("metric", "fp32", "candidate", "delta", "tolerance", "holds", "agreement")
_BASIS_NOTE = (
    "Pure inference on inputs already in host memory (host latency basis): latencies are ms per batch, "
    "images/s = batch size / latency."
)


# ---------------------------------------------------------------- formatting helpers


def _key(cell: dict[str, Any]) -> tuple[str, str, str, int]:
    return (
        str(cell.get("model") or ""),
        str(cell.get("backend") or ""),
        str(cell.get("precision") or ""),
        int(cell.get("batch_size") or 0),
    )


def _sorted(cells: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(cells, key=_key)


def _num(x: float | None) -> str:
    """About three significant digits without scientific notation; "-" for None."""
    if x is None:
        return "-"
    ax = abs(x)
    decimals = 3 if ax < 1 else 2 if ax < 10 else 1 if ax < 1000 else 0
    return f"{x:.{decimals}f}"


def _md(text: str) -> str:
    """One Markdown table cell: no newlines, '|' escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _cut(text: str, n: int = NOTE_CHARS) -> str:
    return text if len(text) <= n else text[: n - 3].rstrip() + "..."


def _stats(cell: dict[str, Any]) -> dict[str, Any]:
    return cell.get("stats") or {}


def _has_stats(cell: dict[str, Any]) -> bool:
    return _stats(cell).get("throughput") is not None


def _guard_text(guard: dict[str, Any] | None) -> str:
    """E.g. "mAP -0.30 (tol 0.5), agreement 98.7"; "-" without a guard or a delta."""
    if guard and guard.get("non_finite"):
        return f"FAILS: {guard['non_finite'].get('precision', '?')} outputs not finite"
    if not guard or guard.get("delta") is None:
        return "-"
    tol = guard.get("tolerance")
    tol_text = "" if tol is None else f" (tol {tol:g})"
    agreement = guard.get("agreement")
    agreement_text = "" if agreement is None else f", agreement {agreement:.1f}"
    return f"{guard.get('metric', '?')} {round(guard['delta'], 2) + 0.0:+.2f}{tol_text}{agreement_text}"


def _ratio_text(overhead: dict[str, Any] | None) -> str:
    ratio = (overhead or {}).get("ratio")
    return "-" if ratio is None else f"{ratio:.3f}"


def _note(cell: dict[str, Any]) -> str:
    """The error, else the noise warning; one line, escaped, at most ``NOTE_CHARS`` long."""
    text = cell.get("error") or _stats(cell).get("warning") or ""
    return _md(_cut(" ".join(str(text).split())))


def _row(values: Iterable[str]) -> str:
    return "| " + " | ".join(values) + " |"


# ---------------------------------------------------------------- tables and rows


def matrix_table(cells: Iterable[dict[str, Any]]) -> str:
    """Markdown table, one row per cell, sorted by model, backend, precision, batch.

    Latencies are ms per batch, images/s is batch_size / latency (host latency basis).
    """
    header = "model | backend | precision | batch | status | images/s | p50 ms | p90 ms | p99 ms | guard | overhead ratio | note"
    lines = [f"| {header} |", "|---|---|---|---:|---|---:|---:|---:|---:|---|---:|---|"]
    for c in _sorted(cells):
        s = _stats(c)
        lines.append(_row([
            *(_md(v) for v in _key(c)[:3]),
            str(c.get("batch_size", "?")),
            _md(c.get("status", "?")),
            _num(s.get("throughput")),
            *(_num(s.get(k)) for k in _PERCENTILES),
            _md(_guard_text(c.get("guard"))),
            _ratio_text(c.get("overhead")),
            _note(c),
        ]))
    return "\n".join(lines)


def _groups(cells: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Cells with stats grouped by (model, backend, precision), each group sorted by batch."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for c in _sorted(cells):
        if _has_stats(c):
            groups.setdefault(_key(c)[:3], []).append(c)
    return groups


def best_batch_table(cells: Iterable[dict[str, Any]]) -> str:
    """Markdown table per model x backend x precision: images/s at batch 1 and at the best batch.

    Only cells with stats count; a group with any status other than "ok" names it in the last column.
    """
    lines = [
        "| model | backend | precision | images/s @ batch 1 | best batch | images/s @ best | speed-up | note |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for (model, backend, precision), group in _groups(cells).items():
        best = max(group, key=lambda c: _stats(c)["throughput"])
        one = next((_stats(c)["throughput"] for c in group if c.get("batch_size") == 1), None)
        top = _stats(best)["throughput"]
        speedup = "-" if not one else f"{top / one:.2f}x"
        other = sorted({str(c.get("status")) for c in group} - {"ok"})
        lines.append(_row([
            _md(model), _md(backend), _md(precision), _num(one), str(best.get("batch_size")),
            _num(top), speedup, _md(", ".join(other)),
        ]))
    return "\n".join(lines)


def matrix_rows(cells: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows for CSV, one per cell (sorted like the table); absent values are None."""
    rows = []
    for c in _sorted(cells):
        s, guard = _stats(c), c.get("guard") or {}
        row: dict[str, Any] = {k: c.get(k) for k in ("model", "backend", "precision", "batch_size", "status", "error")}
        row.update({k: s.get(k) for k in _VALUE_KEYS})
        row.update({f"guard_{k}": guard.get(k) for k in _GUARD_KEYS})
        row["overhead_ratio"] = (c.get("overhead") or {}).get("ratio")
        row["seconds"] = c.get("seconds")
        rows.append(row)
    return rows


def status_counts(cells: Iterable[dict[str, Any]]) -> str:
    """E.g. "12 cells: 9 ok, 1 accuracy failed, 2 backend missing" (most frequent first)."""
    counts = Counter(str(c.get("status", "?")) for c in cells)
    parts = ", ".join(f"{n} {status}" for status, n in counts.most_common())
    return f"{sum(counts.values())} cells: {parts}" if counts else "0 cells"


# ---------------------------------------------------------------- plots


def _basis(cells: list[dict[str, Any]]) -> str:
    bases = sorted({str(_stats(c).get("basis") or "host latency") for c in cells})
    return "/".join(bases) or "host latency"


def _figure(n_rows: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """A pyplot-free Agg figure with ``n_rows`` stacked axes (no global figure state)."""
    # Figure without pyplot: no GUI backend is touched and the caller's matplotlib state stays as it was.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(n_rows, 1, squeeze=False)[:, 0]
    return fig, list(axes)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _by_model(cells: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in _sorted(cells):
        out.setdefault(_key(c)[0], []).append(c)
    return out


def _title(kind: str, cells: list[dict[str, Any]], subtitle: str | None) -> str:
    title = f"{kind} (pure inference, {_basis(cells)} basis)"
    return title if not subtitle else f"{title}\n{subtitle}"


def plot_throughput(cells: Iterable[dict[str, Any]], path: str | Path, subtitle: str | None = None) -> Path | None:
    """Throughput (images/s) vs batch size (log2 axis): one subplot per model, one line per
    backend+precision. Only cells with stats; a line containing a failed accuracy guard says so
    in its label. ``subtitle`` (e.g. the machine) goes under the title. None if nothing to plot.
    """
    cells = [c for c in cells if _has_stats(c)]
    if not cells:
        return None
    models = _by_model(cells)
    fig, axes = _figure(len(models), 8.0, 1.0 + 3.6 * len(models))
    for ax, (model, group) in zip(axes, models.items()):
        for (_, backend, precision), line in _groups(group).items():
            failed = any(c.get("status") == "accuracy failed" for c in line)
            label = f"{backend} {precision}" + (" (accuracy failed)" if failed else "")
            xs = [c["batch_size"] for c in line]
            ax.plot(xs, [_stats(c)["throughput"] for c in line], marker="o", linestyle="--" if failed else "-", label=label)
        batches = sorted({c["batch_size"] for c in group})
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)  # ratios between lines read honestly only from zero
        ax.set(title=model, xlabel="batch size", ylabel="images/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(_title("Throughput vs batch size", cells, subtitle))
    return _save(fig, path)


def _plain_log_labels(axis: Any) -> None:
    """Log-axis labels as "40" rather than "4x10^1"; minor ticks labelled only when there is room."""
    from matplotlib.ticker import LogFormatter

    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))


def _latency_axis(ax: Any, model: str, group: list[dict[str, Any]]) -> None:
    """Boxes of samples_ms per cell; cells without samples show p50/p90/p99 markers instead."""
    positions = list(range(1, len(group) + 1))
    boxed = [(p, c["samples_ms"]) for p, c in zip(positions, group) if c.get("samples_ms")]
    if boxed:
        ax.boxplot([s for _, s in boxed], positions=[p for p, _ in boxed], widths=0.6,
                   whis=(1, 99), flierprops={"markersize": 2})
    for marker, key in zip("o^v", _PERCENTILES):
        pts = [(p, _stats(c)[key]) for p, c in zip(positions, group)
               if not c.get("samples_ms") and _stats(c).get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), linestyle="none", marker=marker, color="tab:red", label=key.replace("_ms", ""))
    ax.set_xticks(positions, [f"{c['backend']} {c['precision']} b{c['batch_size']}" for c in group],
                  rotation=60, ha="right", fontsize="small")
    ax.set_yscale("log")
    _plain_log_labels(ax.yaxis)
    ax.set(title=model, ylabel="ms per batch")
    ax.grid(True, axis="y", alpha=0.3)
    if len(boxed) < len(group):
        ax.legend(fontsize="small", title="no samples")


def plot_latency(cells: Iterable[dict[str, Any]], path: str | Path, subtitle: str | None = None) -> Path | None:
    """Latency distribution (ms per batch, log axis) per backend/precision/batch, one subplot per
    model. Boxes span p25-p75 with whiskers at p1/p99; cells without samples fall back to
    p50/p90/p99 markers. Only cells with stats. None if nothing to plot.
    """
    cells = [c for c in cells if _has_stats(c)]
    if not cells:
        return None
    models = _by_model(cells)
    widest = max(len(g) for g in models.values())
    fig, axes = _figure(len(models), max(8.0, 0.45 * widest), 1.0 + 4.5 * len(models))
    for ax, (model, group) in zip(axes, models.items()):
        _latency_axis(ax, model, group)
    fig.suptitle(_title("Latency per batch", cells, subtitle))
    return _save(fig, path)


# ---------------------------------------------------------------- the report folder


def _machine(environment: dict[str, Any]) -> str:
    cpu = environment.get("cpu_model") or "unknown CPU"
    cores = environment.get("logical_cores")
    return cpu if cores is None else f"{cpu}, {cores} logical cores"


def _threads(environment: dict[str, Any]) -> Any:
    return environment.get("threads") or environment.get("OMP_NUM_THREADS")


def environment_lines(environment: dict[str, Any]) -> list[str]:
    """Markdown bullet list: date, machine, Python, package versions, threads, other scalar facts."""
    versions = environment.get("versions") or {}
    lines = [
        f"- date: {environment.get('date', '?')}",
        f"- CPU: {_machine(environment)}",
        f"- python: {environment.get('python', '?')}",
    ]
    if versions:
        lines.append("- versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items()))
    if _threads(environment) is not None:
        lines.append(f"- threads: {_threads(environment)}")
    shown = {"date", "cpu_model", "logical_cores", "python", "versions", "threads", "OMP_NUM_THREADS"}
    for k, v in environment.items():
        if k not in shown and v is not None and not isinstance(v, (dict, list)):
            lines.append(f"- {k}: {v}")
    return lines


def _markdown(title: str, cells: list[dict[str, Any]], environment: dict[str, Any], plots: dict[str, Path]) -> str:
    parts = [
        f"# {title}",
        "\n".join(environment_lines(environment)),
        _BASIS_NOTE,
        "## All cells",
        matrix_table(cells),
        "## Best batch size",
        best_batch_table(cells),
        f"Status: {status_counts(cells)}.",
    ]
    parts += [f"![{name.removesuffix('_png')}]({p.name})" for name, p in plots.items()]
    return "\n\n".join(parts) + "\n"


def write_matrix_reports(
    out_dir: str | Path, cells: list[dict[str, Any]], environment: dict[str, Any], title: str = "deployzoo matrix"
) -> dict[str, Path]:
    """Write matrix.md, matrix.json ({"environment", "cells"}), matrix.csv, throughput.png and
    latency.png under ``out_dir``. Returns {"md", "json", "csv", "throughput_png", "latency_png"}
    paths; the png entries only when there was something to plot.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = _sorted(cells)
    machine = _machine(environment)
    paths: dict[str, Path] = {
        "json": write_json(out / "matrix.json", {"environment": environment, "cells": cells}),
        "csv": write_csv(out / "matrix.csv", matrix_rows(cells)),
    }
    plots = {
        "throughput_png": plot_throughput(cells, out / "throughput.png", subtitle=machine),
        "latency_png": plot_latency(cells, out / "latency.png", subtitle=machine),
    }
    plots_written = {k: p for k, p in plots.items() if p is not None}
    md = out / "matrix.md"
    md.write_text(_markdown(title, cells, environment, plots_written), encoding="utf-8")
    return {"md": md, **paths, **plots_written}
