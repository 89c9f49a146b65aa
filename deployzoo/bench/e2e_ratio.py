"""``run``'s end-to-end / pure-inference ratio, measured on the same images at the same batch.

The pure-inference side times the engine on the graph inputs of the first full batch the evaluation ran
(real images, preprocessed and collated exactly as the pipeline fed them), not on random inputs of another
shape: a detector's time depends on its input's size and, through NMS and the mask head, on its content.
The end-to-end side is the pipeline's steady rate (``StageTimer.steady_rate``): images finished after the
first batch over the time between the first and the last batch's results, so worker start-up and the
filling of the pipeline, which a long run amortises, are not counted. The whole run's wall-clock rate is
kept beside it.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from deployzoo.bench.pure import PureBenchResult
from deployzoo.bench.timing import StageTimer

REAL_INPUTS = "the first full batch of the evaluation images, as the pipeline fed them (same images, same batch)"


def pure_inputs_for(sample: dict[str, np.ndarray] | None,
                    fallback: Callable[[int], dict[str, np.ndarray]]) -> tuple[Callable[[int], dict[str, np.ndarray]], str]:
    """``inputs_for(batch)`` for ``bench_sweep`` and what it gives, in words.

    ``sample``: graph inputs whose dim 0 is the batch (``DatasetRun.extra["first_full_batch"]``); a batch
    size other than the sample's takes its first images, or repeats them in order to fill a larger one.
    Without a sample (fewer images than the batch, every image resumed from an earlier run, or a runner that
    keeps none), ``fallback`` (the model's example inputs), said so.
    """
    if not sample:
        return fallback, ("the model's example inputs (the evaluation ran no full batch of real images: fewer images "
                          "than the batch, or all resumed from an earlier run)")

    def inputs_for(batch: int) -> dict[str, np.ndarray]:
        have = next(iter(sample.values())).shape[0]
        repeats = -(-batch // have)
        return {name: np.ascontiguousarray(np.concatenate([value] * repeats)[:batch]) for name, value in sample.items()}

    return inputs_for, REAL_INPUTS


def end_to_end_over_pure(timer: StageTimer, bench: Sequence[PureBenchResult], eval_batch: int,
                         pure_inputs: str) -> dict[str, Any]:
    """The ratio and its parts (report.json ``end_to_end_over_pure``); ``ratio`` None when either side is missing.

    End to end: the steady rate when at least two batches finished, else the whole run's wall-clock rate
    (``end_to_end_basis`` says which). Pure: the benchmark cell nearest ``eval_batch`` (the larger on a tie).
    """
    wall = next((r["images_per_s"] for r in timer.rows() if r["stage"] == "end to end"), None)
    steady = timer.steady_rate()
    if steady is not None:
        end_to_end, basis = steady["images_per_s"], f"steady rate: {steady['basis']} ({steady['batches']} batches)"
    else:
        end_to_end, basis = wall, "wall clock of the whole run from the first prepared image (fewer than 2 batches)"
    ok = [r for r in bench if r.ok]
    near = min(ok, key=lambda r: (abs(r.batch_size - eval_batch), -r.batch_size)) if ok else None
    pure = near.stats.throughput if near is not None else None
    return {
        "ratio": end_to_end / pure if end_to_end and pure else None,
        "end_to_end_images_per_s": end_to_end,
        "end_to_end_basis": basis,
        "wall_images_per_s": wall,
        "pure_images_per_s": pure,
        "pure_batch": near.batch_size if near is not None else None,
        "pure_inputs": pure_inputs,
        "eval_batch": eval_batch,
    }
