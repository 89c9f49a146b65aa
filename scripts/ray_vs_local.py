"""One model on one generated dataset, evaluated twice through the `deployzoo eval` command: locally with
--threads LOCAL_THREADS, and over a local Ray cluster (--ray local --replicas R --threads-per-replica T).
Checks that the metrics are identical and prints both throughputs side by side with Ray's overhead share.

    .venv/bin/python scripts/ray_vs_local.py refinedet320-vgg16-voc --num-images 24 --batch 2 --out runs/ray-vs-local

Throughputs are end to end (read + preprocess + infer + post-process, images/s from the first prepared image or
the first shard sent; start-up apart), fp32, onnxruntime, CPU. Writes OUT/comparison.json and OUT/comparison.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

from deployzoo.cli import main as deployzoo
from deployzoo.jsonio import dumps
from deployzoo.registry import get_spec


def _end_to_end(metrics: dict) -> tuple[float | None, float | None]:
    stages = metrics["stages"]
    row = next(r for r in stages["rows"] if r["stage"] == "end to end")
    return row["images_per_s"], stages.get("startup_s")


def compare(model: str, num_images: int, batch: int, out: Path, local_threads: int, replicas: int,
            threads_per_replica: int) -> dict:
    spec = get_spec(model)
    if out.exists():
        shutil.rmtree(out)
    data = spec.evaluation.make_synthetic(out / "data", num_images=num_images)
    common = ["eval", model, "--data", str(data), "--batch", str(batch), "--pictures", "0"]
    assert deployzoo([*common, "--threads", str(local_threads), "--workers", "1", "--out", str(out / "local")]) == 0
    assert deployzoo([*common, "--ray", "local", "--replicas", str(replicas), "--threads-per-replica",
                      str(threads_per_replica), "--out", str(out / "ray")]) == 0
    local = json.loads((out / "local" / "metrics.json").read_text())
    ray = json.loads((out / "ray" / "metrics.json").read_text())
    report = ray["ray"]
    local_rate, local_startup = _end_to_end(local)
    result = {
        "model": model, "images": num_images, "batch": batch, "backend": "onnxruntime", "precision": "fp32",
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, shared with other jobs (loaded)",
        "metrics_identical": local["metrics"] == ray["metrics"],
        "headline": {"local": local["headline"]["value"], "ray": ray["headline"]["value"]},
        "local": {"threads": local_threads, "workers": 1, "images_per_s": local_rate, "startup_s": local_startup},
        "ray": {"replicas": replicas, "threads_per_replica": threads_per_replica,
                "images_per_s": report["images_per_s"],
                "per_replica_images_per_s": [r["images_per_s"] for r in report["per_replica"]],
                "overhead_share": report["overhead"]["share"],
                "scheduling_transfer_share": report["overhead"].get("scheduling_transfer_share"),
                "tail_share": report["overhead"].get("tail_share"),
                "startup_s": report["cluster_start_s"] + report["replica_start_s"]},
    }
    return result


def table(r: dict) -> str:
    loc, ray = r["local"], r["ray"]
    per = ", ".join(f"{v:.3f}" for v in ray["per_replica_images_per_s"] if v is not None)
    return "\n".join([
        f"{r['model']}, {r['images']} generated images, batch {r['batch']}, {r['backend']} {r['precision']}, "
        f"end to end; {r['machine']}",
        "| run | images/s | per replica images/s | Ray overhead share (scheduling + transfer, tail) | "
        "start-up s (apart) |",
        "|---|---:|---:|---:|---:|",
        f"| local, --threads {loc['threads']} --workers 1 | {loc['images_per_s']:.3f} | - | - | "
        f"{loc['startup_s'] or 0:.1f} |",
        f"| --ray local --replicas {ray['replicas']} --threads-per-replica {ray['threads_per_replica']} | "
        f"{ray['images_per_s']:.3f} | {per} | {ray['overhead_share']:.1%} ({ray['scheduling_transfer_share']:.1%}, "
        f"{ray['tail_share']:.1%}) | {ray['startup_s']:.1f} |",
        "",
        f"metrics identical: {r['metrics_identical']} (headline local {r['headline']['local']!r}, "
        f"ray {r['headline']['ray']!r})",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--num-images", type=int, default=24)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--local-threads", type=int, default=2)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--threads-per-replica", type=int, default=1)
    args = p.parse_args(argv)
    out = Path(args.out)
    result = compare(args.model, args.num_images, args.batch, out, args.local_threads, args.replicas,
                     args.threads_per_replica)
    text = table(result)
    (out / "comparison.json").write_text(dumps(result, indent=1))
    (out / "comparison.md").write_text(text + "\n")
    print("\n" + text)
    return 0 if result["metrics_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
