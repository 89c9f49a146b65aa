"""``run``'s end-to-end / pure-inference ratio, measured on the same images at the same batch.

The pure-inference side replays the evaluation's own batches (``replay_pure``): the engine that evaluated is
timed again on the graph inputs the pipeline fed it, batch by batch (real images, preprocessed and collated as
in the run), with nothing else running; a detector's time depends on each input's size and, through NMS and the
mask head, on its content, so neither random inputs of another shape nor one batch standing for images of other
sizes compare like with like (one batch did: PSPNet read 0.78 and Mask R-CNN 1.53 on 6 images of mixed sizes).
The end-to-end side is the pipeline's steady rate (``StageTimer.steady_rate``) over the same batches: the images
of the batches after the first over the time from the end of the first batch's inference to the end of the last
batch's inference or of the previous batch's post-processing, whichever is later. That window holds one whole
period (an inference and, overlapped with it, the previous batch's post-processing) per counted batch, so worker
start-up, the filling of the pipeline and its draining (the last batch's own post-processing, after the last
inference), which a long run amortises, are not counted. The whole run's wall-clock rate is kept beside it.
Both sides move with the machine's speed (on a shared 2-core VM the same batch took 4.3 s in one minute and 6.2 s
a few minutes later), so ``ratio_rounds`` alternates a pipeline pass and a replay over the same images and reports the median of the rounds' ratios. Only full batches
count, from the first on; ``run`` gives no ratio, and says why (``no_ratio``), when the evaluation begins with
fewer than two. (``end_to_end_over_pure`` without a replay, the benchmark cell nearest the evaluation batch
standing in, remains for callers that have no replay.)
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from deployzoo.bench.pure import PureBenchResult
from deployzoo.bench.timing import StageTimer

REAL_INPUTS = "the first full batch of the evaluation images, as the pipeline fed them (same images, same batch)"


def pure_inputs_for(sample: dict[str, np.ndarray] | None,
                    fallback: Callable[[int], dict[str, np.ndarray]]) -> tuple[Callable[[int], dict[str, np.ndarray]], str]:
    """``inputs_for(batch)`` for ``bench_sweep`` and what it gives, in words.

    ``sample``: graph inputs whose dim 0 is the batch (``DatasetRun.fed["first_full_batch"]``); a batch
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


REPLAYED = ("the evaluation's own batches replayed on the engine that ran them, nothing else running (batches "
            "after the first, each batch's median over {rounds} rounds after one warm-up call)")


def replay_pure(infer: Callable[[dict[str, np.ndarray]], Any], batches: Sequence[tuple[dict[str, np.ndarray], int]],
                rounds: int = 3) -> dict[str, Any] | None:
    """Pure-inference throughput (images/s) on the evaluation's own batches, the counterpart of the steady rate.

    ``batches``: (graph inputs, images in the batch) in the order the run inferred them
    (``DatasetRun.fed["batches"]``). One warm-up call on the first batch, then ``rounds`` passes over the
    batches after the first; a batch's time is its median over the passes. Returns {"images_per_s", "images",
    "seconds", "batches", "rounds"}, or None with fewer than two batches.
    """
    if len(batches) < 2:
        return None
    infer(batches[0][0])
    times: list[list[float]] = [[] for _ in batches[1:]]
    for _ in range(rounds):
        for k, (inputs, _) in enumerate(batches[1:]):
            t0 = time.perf_counter()
            infer(inputs)
            times[k].append(time.perf_counter() - t0)
    seconds = float(sum(np.median(t) for t in times))
    images = sum(n for _, n in batches[1:])
    return {"images_per_s": images / seconds, "images": images, "seconds": seconds, "batches": len(batches) - 1,
            "rounds": rounds}


def end_to_end_over_pure(timer: StageTimer, bench: Sequence[PureBenchResult], eval_batch: int,
                         pure_inputs: str, replay: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ratio and its parts (report.json ``end_to_end_over_pure``); ``ratio`` None when either side is missing.

    With ``replay`` (``replay_pure`` over the first ``replay["batches"] + 1`` batches of the run): end to end is the
    steady rate over those same batches, pure is the replay. Without it, end to end is the steady rate when at
    least two batches finished, else the whole run's wall-clock rate (``end_to_end_basis`` says which), and pure
    is the benchmark cell nearest ``eval_batch`` (the larger on a tie), timed on ``pure_inputs``.
    """
    wall = next((r["images_per_s"] for r in timer.rows() if r["stage"] == "end to end"), None)
    steady = timer.steady_rate(None if replay is None else replay["batches"] + 1)
    if replay is not None and steady is not None:
        return {
            "ratio": steady["images_per_s"] / replay["images_per_s"],
            "end_to_end_images_per_s": steady["images_per_s"],
            "end_to_end_basis": f"steady rate: {steady['basis']} ({_batches(steady['batches'])})",
            "wall_images_per_s": wall,
            "pure_images_per_s": replay["images_per_s"],
            "pure_batch": eval_batch,
            "pure_inputs": REPLAYED.format(rounds=replay["rounds"]),
            "eval_batch": eval_batch,
        }
    if steady is not None:
        end_to_end, basis = steady["images_per_s"], f"steady rate: {steady['basis']} ({_batches(steady['batches'])})"
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


def _batches(count: int) -> str:
    return f"{count} batch" if count == 1 else f"{count} batches"


def leading_full_batches(batches: Sequence[tuple[dict[str, np.ndarray], int]], batch_size: int,
                         limit: int) -> list[tuple[dict[str, np.ndarray], int]]:
    """The first ``limit`` batches, up to the first that is not full: (graph inputs, images) pairs as
    ``DatasetRun.fed["batches"]`` keeps them. A padded short batch holds fewer images than the batch size it runs
    at: its steady window and replay would stand for a rate the pipeline never ran at."""
    full = []
    for inputs, count in batches[:limit]:
        if count != batch_size:
            break
        full.append((inputs, count))
    return full


def no_ratio(timer: StageTimer, eval_batch: int, full_batches: int) -> dict[str, Any]:
    """``end_to_end_over_pure`` of a run with fewer than two full batches: no ratio (None) and why.

    A steady rate needs a batch after the first, and a padded short batch runs at the batch size with fewer images,
    so neither a single batch's wall clock (filling and draining included) nor a padded batch compares with pure
    inference at the batch size. The whole run's wall-clock rate is kept for what it is."""
    wall = next((r["images_per_s"] for r in timer.rows() if r["stage"] == "end to end"), None)
    return {"ratio": None, "end_to_end_images_per_s": None, "pure_images_per_s": None, "wall_images_per_s": wall,
            "eval_batch": eval_batch,
            "reason": (f"the evaluation began with {full_batches} full batch{'' if full_batches == 1 else 'es'} of "
                       f"{eval_batch} images; the ratio needs at least 2 (a steady rate is measured after the first "
                       f"batch, on full batches): give --num-images of at least {2 * eval_batch}, or a smaller "
                       f"--eval-batch")}


def ratio_rounds(first: dict[str, Any], again: Callable[[], tuple[StageTimer, dict[str, Any] | None]],
                 rounds: int = 3) -> dict[str, Any]:
    """The end-to-end/pure ratio as the median of ``rounds`` alternating measurements.

    ``first``: ``end_to_end_over_pure`` of the evaluation pass (with its replay), round 1. ``again()`` runs one
    more pipeline pass over the same images and then its replay, returning (the pass's timer, ``replay_pure``);
    each such round's ratio is its steady rate over its own replay, measured a moment apart. The result is
    ``first`` with ``ratio``, ``end_to_end_images_per_s`` and ``pure_images_per_s`` those of the median round (the
    lower middle one for an even count) among the rounds that gave one, and ``rounds`` each round's figures.
    """
    if first.get("ratio") is None or "replayed" not in first.get("pure_inputs", ""):
        return first
    figures = [{"end_to_end_images_per_s": first["end_to_end_images_per_s"],
                "pure_images_per_s": first["pure_images_per_s"], "ratio": first["ratio"]}]
    for _ in range(rounds - 1):
        timer, replay = again()
        steady = timer.steady_rate(None if replay is None else replay["batches"] + 1)
        if replay is None or steady is None:
            continue
        figures.append({"end_to_end_images_per_s": steady["images_per_s"], "pure_images_per_s": replay["images_per_s"],
                        "ratio": steady["images_per_s"] / replay["images_per_s"]})
    # The median round (the lower of the two middle ones for an even count) gives the ratio AND the images/s
    # printed beside it, so the figures shown divide to the ratio shown.
    middle = sorted(figures, key=lambda f: f["ratio"])[(len(figures) - 1) // 2]
    return first | {"ratio": middle["ratio"], "end_to_end_images_per_s": middle["end_to_end_images_per_s"],
                    "pure_images_per_s": middle["pure_images_per_s"], "rounds": figures,
                    "ratio_basis": f"median of {len(figures)} rounds, each a pipeline pass then the replay of its "
                                   "batches (round 1: the evaluation's own pass, or a first pass over 4 batches "
                                   "when it resumed every image)"}
