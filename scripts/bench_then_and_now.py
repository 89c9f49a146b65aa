"""Today's engines against the eager PyTorch backend of an earlier commit, interleaved in one process.

    git worktree add /tmp/dz-then 02339a1
    .venv/bin/python scripts/bench_then_and_now.py /tmp/dz-then [--model d2-cascade-mask-rcnn-r50-fpn-3x]
        [--backends pytorch,onnxruntime,openvino,openvino:int8] [--rounds 5] [--threads 2] [--image PATH]

Why: issue 15 measures speed against detectron2 itself, which cannot be installed here, and names our eager
backend of that day as its stand-in (4.73 s against detectron2's 4.78 s per image on its machine). Our eager
backend has become faster since (FrozenBatchNorm2d as one fused ``F.batch_norm``, as detectron2 runs it), so
"x today's eager" is a stricter yardstick than "x detectron2"; this prints both. 02339a1 is the last commit
before the issue's work began.

How: the earlier checkout's package is imported first and its eager engine built (stand-in weights, the
same seed), then its modules are dropped from ``sys.modules`` and this checkout's engines are built; each keeps
the code it was built with. Both sides preprocess the image and must give the same graph inputs (checked), and
the outputs of every engine are compared with the earlier eager's (largest absolute difference, printed).
Basis: wall time of the engine's ``infer`` call alone (the host stages are the same code for every engine and a
few hundredths of a second; ``bench --e2e`` times them), one warm-up call each, then ``--rounds`` rounds in
which every engine runs once, the order rotating each round; medians over the rounds. Say the machine's load
with the figures: on a shared VM one call can take 30% longer than the next.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _unload(root: Path) -> None:
    """Take ``root`` off the import path and drop its deployzoo modules, so another checkout's can be imported."""
    sys.path.remove(str(root))
    for name in [n for n in sys.modules if n == "deployzoo" or n.startswith("deployzoo.")]:
        del sys.modules[name]


def _open(root: Path, model: str, image: str, backends: list[str], threads: int, work_dir: str):
    """Engines of the package under ``root`` (``backends``: names, each with an optional ``:precision``, fp32 when
    none; int8 calibrates on the engine cache's generated set, said so) and its graph inputs for ``image``; the
    package is unloaded after."""
    import cv2

    sys.path.insert(0, str(root))
    try:
        from deployzoo.engine import load_model
        from deployzoo.pipeline import open_engine
        from deployzoo.registry import get_spec

        spec = get_spec(model)
        loaded = load_model(spec, None)
        picture = cv2.imread(image)
        if picture is None:
            raise SystemExit(f"error: {image}: not an image OpenCV can read")
        array, meta = spec.preprocess(picture)
        feeds = spec.make_feeds([array], [meta], 1)
        engines = {}
        for entry in backends:
            backend, _, precision = entry.partition(":")
            onnx = None
            if backend != "pytorch":
                from deployzoo.cache import cached_onnx

                onnx = cached_onnx(loaded, batch_size=1).path
            engines[f"{backend} {precision or 'fp32'}"] = open_engine(
                spec, backend, 1, onnx_path=onnx, loaded=loaded, threads=threads, work_dir=work_dir,
                precision=precision or "fp32")
    finally:
        _unload(root)
    return engines, feeds


def _max_diff(a: dict, b: dict) -> dict[str, float]:
    out = {}
    for key in b:
        x, y = np.asarray(a.get(key)), np.asarray(b[key])
        if x.shape == y.shape and x.size:
            out[key] = float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())
    return out


def _check_names(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--model and --backends against this checkout's registry, before anything is built; the package is unloaded
    again so that the earlier checkout's can be imported first."""
    sys.path.insert(0, str(ROOT))
    try:
        from deployzoo.backends import BACKENDS
        from deployzoo.cli import refuse_precision
        from deployzoo.errors import DeployzooError
        from deployzoo.registry import model_names

        models, backends = list(model_names()), list(BACKENDS)
        if args.model not in models:
            parser.error(f"--model {args.model!r} is not in the zoo: {', '.join(models)}")
        entries = [b.strip() for b in args.backends.split(",") if b.strip()]
        if not entries:
            parser.error(f"--backends {args.backends!r}: give comma-separated backends from {', '.join(backends)}, "
                         "each with an optional :precision")
        engines = []
        for entry in entries:
            backend, colon, precision = entry.partition(":")
            if backend not in backends:
                parser.error(f"--backends: {entry!r} names no backend; choose from {', '.join(backends)}")
            if colon and not precision:
                parser.error(f"--backends: {entry!r} has an empty precision; leave out the ':' for fp32")
            if precision == "auto":
                parser.error(f"--backends: {entry!r}: name the precision to time (auto chooses one: "
                             "deployzoo bench --precision auto)")
            try:  # the commands' own rule: what the backend offers, and (OpenVINO fp16/bf16) what this CPU runs
                refuse_precision(backend, precision or "fp32")
            except DeployzooError as exc:
                parser.error(f"--backends: {entry!r}: {exc}")
            engines.append(f"{backend}:{precision or 'fp32'}")
        repeated = sorted({e for e in engines if engines.count(e) > 1})
        if repeated:
            parser.error(f"--backends {args.backends!r} names {', '.join(repeated)} more than once")
    finally:
        _unload(ROOT)
    args.backends = ",".join(engines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("then", type=Path, help="checkout of the earlier commit (git worktree add DIR COMMIT)")
    parser.add_argument("--model", default="d2-cascade-mask-rcnn-r50-fpn-3x")
    parser.add_argument("--backends", default="pytorch,onnxruntime,openvino",
                        help="today's engines, each an optional :precision (openvino:int8); fp32 when none")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image", default=None, help="default: the model's fixture image case-1.png")
    parser.add_argument("--work-dir", default="runs/then-and-now")
    args = parser.parse_args()
    if not (args.then / "deployzoo" / "__init__.py").is_file():
        parser.error(f"{args.then}: no deployzoo package there (make it with git worktree add {args.then} COMMIT)")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    _check_names(parser, args)
    image = args.image or str(ROOT / "tests" / "fixtures" / args.model / "case-1.png")
    import cv2

    if cv2.imread(image) is None:
        parser.error(f"--image {image}: not an image file OpenCV can read")
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)

    then, then_feeds = _open(args.then.resolve(), args.model, image, ["pytorch"], args.threads, args.work_dir)
    now, feeds = _open(ROOT, args.model, image, args.backends.split(","), args.threads, args.work_dir)
    for key in feeds:
        if not np.array_equal(np.asarray(feeds[key]), np.asarray(then_feeds[key])):
            raise SystemExit(f"error: the two checkouts preprocess {image} differently (input {key!r})")
    yardstick = f"eager fp32 @ {args.then.name} (then)"
    engines = {yardstick: then["pytorch fp32"], **{f"{name} today": engine for name, engine in now.items()}}
    reference = engines[yardstick].infer(feeds)
    for name, engine in engines.items():
        diffs = _max_diff(engine.infer(feeds), reference)  # also the warm-up call
        print(f"{name}: largest |difference| from {yardstick}: "
              + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    names = list(engines)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            engines[name].infer(feeds)
            times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in names), flush=True)
    then_s = float(np.median(times[yardstick]))
    now_name = "pytorch fp32 today"
    now_s = float(np.median(times[now_name])) if now_name in times else None
    print(f"\n{args.model}, infer call, median of {args.rounds} rounds, {args.threads} threads")
    print(f"| engine | s/image | time / eager then | time / eager today |\n|---|---:|---:|---:|")
    for name in names:
        s = float(np.median(times[name]))
        today = f"{s / now_s:.3f}" if now_s else "-"
        print(f"| {name} | {s:.3f} | {s / then_s:.3f} | {today} |")


if __name__ == "__main__":
    main()
