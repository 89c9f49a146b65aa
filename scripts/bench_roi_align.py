"""Microbenchmark: eager RoIAlign, the batched formulation (``roi_align_batched``) against the per-RoI loop
(``roi_align_per_roi``), on the same inputs, interleaved, both results checked equal.

    .venv/bin/python scripts/bench_roi_align.py [--repeats 7] [--threads 2]

Inputs: the RPN proposals (1000) and final boxes (100) stored in the Mask R-CNN (mmdet) and Cascade Mask R-CNN
(detectron2) fixtures (tests/fixtures, or $DZ_FIXTURES), on random FPN maps of those fixtures' shapes
(800x1088 network input, 256 channels, strides 4-32), pooled as each model pools them: the box pooler (7x7)
on the proposals and the mask pooler (14x14) on the boxes, sampling ratio 0, aligned, each family's level rule.
Basis: wall time and this process's CPU time (less sensitive to other processes taking the cores) of one
whole multi-level pooling call (all levels), medians over the repeats; the two formulations alternate within
each repeat (which goes first alternates too). Timings depend on the machine's load: say it with them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from deployzoo.ops.roi_align import roi_align_batched, roi_align_per_roi
from deployzoo.ops.roi_extractor import map_roi_levels

STRIDES = (4, 8, 16, 32)
FIXTURES = Path(os.environ.get("DZ_FIXTURES", Path(__file__).resolve().parents[1] / "tests" / "fixtures"))


def pool(fn, features, boxes, batch, size, rule):
    """Multi-level pooling as MultiLevelRoIAlign does it, with ``fn`` as the single-level op."""
    levels = map_roi_levels(boxes, len(STRIDES), rule)
    pooled, order = [], []
    for level, stride in enumerate(STRIDES):
        index = torch.nonzero(levels == level).squeeze(1)
        pooled.append(fn(features[level], boxes[index], batch[index], size, 1.0 / stride, 0, True))
        order.append(index)
    order = torch.cat(order)
    inverse = torch.zeros_like(order).scatter(0, order, torch.arange(order.shape[0]))
    return torch.cat(pooled).index_select(0, inverse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(1, 256, 800 // s, 1088 // s, generator=g) for s in STRIDES]
    d2 = np.load(FIXTURES / "d2-cascade-mask-rcnn-r50-fpn-3x" / "case-1.npz")
    mm = np.load(FIXTURES / "mmdet-mask-rcnn-r50-fpn-1x" / "case-1.npz")
    final_boxes = torch.from_numpy(d2["pre_boxes_resized"])  # 100 detections in network pixels
    cases = [
        ("Mask R-CNN box pooler 7x7", torch.from_numpy(mm["rpn_proposals"]), 7, "mmdet"),
        ("Mask R-CNN mask pooler 14x14", final_boxes, 14, "mmdet"),
        ("Cascade box pooler 7x7", torch.from_numpy(d2["rpn_proposals"]), 7, "detectron2"),
        ("Cascade mask pooler 14x14", final_boxes, 14, "detectron2"),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    print("| case | RoIs | loop wall ms | batched wall ms | wall speed-up | loop CPU ms | batched CPU ms "
          "| CPU speed-up | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        for name, boxes, size, rule in cases:
            batch = torch.zeros(boxes.shape[0], dtype=torch.int64)
            fns = {"loop": roi_align_per_roi, "batched": roi_align_batched}
            results = {k: pool(f, features, boxes, batch, size, rule) for k, f in fns.items()}  # warm-up
            diff = (results["loop"] - results["batched"]).abs().max().item()
            wall = {k: [] for k in fns}
            cpu = {k: [] for k in fns}
            for rep in range(args.repeats):
                for k in (list(fns) if rep % 2 == 0 else list(fns)[::-1]):
                    t0, c0 = time.perf_counter(), time.process_time()
                    pool(fns[k], features, boxes, batch, size, rule)
                    wall[k].append(time.perf_counter() - t0)
                    cpu[k].append(time.process_time() - c0)
            w_loop, w_new, c_loop, c_new = (1e3 * statistics.median(t[k]) for t in (wall, cpu) for k in ("loop", "batched"))
            print(f"| {name} | {boxes.shape[0]} | {w_loop:.1f} | {w_new:.1f} | {w_loop / w_new:.2f}x "
                  f"| {c_loop:.1f} | {c_new:.1f} | {c_loop / c_new:.2f}x | {diff:.2g} |")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
