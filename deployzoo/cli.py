"""The ``deployzoo`` command: thin wrappers over the library."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deployzoo.backends import BACKENDS
from deployzoo.errors import BadInputError, DeployzooError
from deployzoo.figures import headline_text
from deployzoo.option_types import (MAX_BATCH, MAX_GENERATED_IMAGES, MAX_THREADS, MAX_WORKERS, finite_number,
                                    whole_number)
from deployzoo.precision import CHOICES as PRECISION_CHOICES


def _batch_size(text: str) -> int:
    """--batch: images per inference call, a whole number of at least 1 (refused here, before any work)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a batch size is a whole number of images, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a batch size is the number of images per inference call and must be "
                                         f"at least 1, got {value}")
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"a batch size is at most {MAX_BATCH} images per inference call, got {value}")
    return value


def _repeated(values: list) -> list:
    """The values given more than once, sorted (an option's list: the same cells would run twice)."""
    return sorted({v for v in values if values.count(v) > 1})


def _batch_list(text: str) -> list[int]:
    values = [_batch_size(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got '{text}'")
    repeated = _repeated(values)
    if repeated:  # the same cells would be timed twice and listed twice
        raise argparse.ArgumentTypeError(f"batch size {', '.join(map(str, repeated))} given more than once in '{text}'")
    return values


def _add_engine_args(p: argparse.ArgumentParser, backend_default: str = "onnxruntime") -> None:
    p.add_argument("model", help="registry name (see `deployzoo models`)")
    p.add_argument("--checkpoint", help="official checkpoint file; without it, deterministic stand-in weights")
    p.add_argument("--onnx", help="run this exported .onnx instead of exporting one")
    p.add_argument("--backend", default=backend_default, choices=list(BACKENDS),
                   help=f"engine to run (default {backend_default}); ONNX backends use the engine cache's export")
    p.add_argument("--threads", type=whole_number(0, "threads", MAX_THREADS), default=0,
                   help="intra-op threads (0 = backend default)")
    _add_precision_args(p)


def _precision_names(text: str) -> list[str]:
    """--auto-precisions: comma-separated precisions, each known and given once, at least one (parse time, before
    any export or guard data)."""
    from deployzoo.precision import PRECISIONS

    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"names nothing (got '{text}'); give comma-separated precisions from: "
                                         f"{', '.join(PRECISIONS)}")
    unknown = [n for n in names if n not in PRECISIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown precision {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
    if _repeated(names):
        raise argparse.ArgumentTypeError(f"names {', '.join(_repeated(names))} more than once")
    return names


def _add_precision_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="fp32", choices=list(PRECISION_CHOICES),
                   help="fp16/bf16/int8 engines are checked by the accuracy guard (metric vs fp32 on a sample, "
                        "delta reported); auto measures each precision's speed and guard here, keeps the fastest "
                        "whose guard holds and prints the table")
    p.add_argument("--guard-images", type=whole_number(1, "images", MAX_GENERATED_IMAGES), default=8,
                   help="images the accuracy guard evaluates")
    p.add_argument("--guard-tolerance", type=finite_number("--guard-tolerance", 0, 100), default=0.5,
                   help="largest metric drop (points, 0-100) the guard allows")
    p.add_argument("--guard-data", help="dataset for the guard (default: the command's --data, else a synthetic set)")
    p.add_argument("--auto-precisions", type=_precision_names,
                   help="the candidates --precision auto measures (default: all the backend offers here)")
    p.add_argument("--calibration-data", help="int8 calibration dataset (default: the command's --data, else a "
                                              "generated synthetic set, which it says)")
    p.add_argument("--calibration-images", type=whole_number(1, "images", MAX_GENERATED_IMAGES), default=16,
                   help="images int8 calibration uses (the first N)")


def _calibration(args: argparse.Namespace, data=None):
    """int8's calibration images: --calibration-data, else the command's --data, else generated (None)."""
    from deployzoo.backends.openvino_int8 import Calibration

    return Calibration(getattr(args, "calibration_data", None) or data, getattr(args, "calibration_images", 16))


def refuse_precision(backend: str, precision: str, auto_precisions: list[str] | None = None) -> None:
    """Refuse a precision ``backend`` does not offer, or (OpenVINO fp16/bf16) this CPU does not run natively,
    before anything is built, exported or generated: each command calls this first. ``auto`` is refused when none
    of its candidates (``auto_precisions``, default all) below fp32 is offered: it would export, make guard data
    and time fp32 only to keep fp32.

    Raises:
        UnsupportedPrecision: with the backend's or the CPU plugin's reason.
    """
    from deployzoo.precision import UnsupportedPrecision, check_precision

    if precision == "auto":
        from deployzoo.precision_auto import auto_candidates

        candidates, notes = auto_candidates(backend, auto_precisions)
        if not [c for c in candidates if c != "fp32"]:
            why = "; ".join(f"{p} {reason}" for p, reason in notes.items() if p != "fp32")
            raise UnsupportedPrecision(f"--precision auto has nothing below fp32 to choose from on {backend} here "
                                       f"({why}): run --precision fp32"
                                       + ("" if backend == "openvino" else ", or --backend openvino --precision auto"))
        return

    check_precision(backend, precision)
    if backend == "openvino" and precision in ("fp16", "bf16"):
        from deployzoo.backends.openvino_backend import precision_refusal

        refusal = precision_refusal(precision)
        if refusal:
            raise UnsupportedPrecision(f"openvino cannot run {precision}: {refusal}")


def _resolve_precision(args: argparse.Namespace, spec, backend: str, out: Path, loaded=None, onnx=None,
                       data=None) -> tuple[str, dict | None]:
    """--precision as given, or auto's choice; below fp32 the accuracy guard runs first and is reported.
    The command has called ``refuse_precision`` first, before any model or export."""
    from deployzoo.backends import ONNX_BACKENDS
    from deployzoo.engine import load_model
    from deployzoo.cache import cached_onnx
    from deployzoo.pipeline import open_engine
    from deployzoo.precision_guard import run_guard, resolve_precision

    if args.precision == "fp32":
        return "fp32", None
    if onnx is None or backend not in ONNX_BACKENDS:  # build the model (and its export) once for both guard engines
        loaded = loaded or load_model(spec, args.checkpoint)
    if onnx is None and backend in ONNX_BACKENDS:
        onnx = cached_onnx(loaded, batch_size=1).path
    data_root = args.guard_data or data
    if data_root is None:
        data_root = spec.evaluation.make_synthetic(out / "guard-data", num_images=args.guard_images)
        print(f"note: the accuracy guard runs on {args.guard_images} generated synthetic images ({data_root})")
    _refuse_guard_misfits(spec, backend, data_root, onnx, args.guard_images)

    def engine(p: str):
        device = "cpu" if backend in ONNX_BACKENDS else getattr(args, "device", "cpu")
        return open_engine(spec, backend, 1, onnx_path=onnx, work_dir=out, threads=args.threads, loaded=loaded,
                           precision=p, device=device, calibration=_calibration(args, data))

    def guard(precision: str, opener=engine):
        return run_guard(spec, opener, precision, data_root, out / "guard", num_images=args.guard_images,
                         tolerance=args.guard_tolerance)

    if args.precision == "auto":
        from deployzoo.bench.report import write_json
        from deployzoo.precision_auto import auto_candidates, choose_precision

        candidates, notes = auto_candidates(backend, args.auto_precisions)
        choice = choose_precision(backend, candidates, engine, guard, spec.make_example_inputs(1), notes)
        write_json(out / "precision-auto.json", choice.to_dict())
        print(f"wrote {out / 'precision-auto.json'}")
        chosen_guard = choice.guard
        return choice.chosen, {**(chosen_guard.to_dict() if chosen_guard else {}), "auto": choice.to_dict()}
    precision, result = resolve_precision(args.precision, backend, guard)
    if result is not None and not result.holds and args.precision != "auto":
        print(f"warning: {precision} was asked for and is kept, but its accuracy guard does not hold")
    return precision, None if result is None else result.to_dict()


def _refuse_guard_misfits(spec, backend: str, data_root, onnx, guard_images: int) -> None:
    """The accuracy guard runs the engine on its images: an engine of one input size must fit them all, else it
    is refused before it is built (the guard's images are rarely the ones the command was given)."""
    from deployzoo.fixed_size import engine_input_hw, refuse_misfits

    if engine_input_hw(spec, backend, 1, onnx) is None:
        return
    sizes = spec.evaluation.validate(data_root, limit=guard_images).sizes_by_path()
    try:
        refuse_misfits(spec, backend, sizes, 1, onnx)
    except DeployzooError as exc:
        raise DeployzooError(f"the accuracy guard below fp32 runs this engine on {len(sizes)} images of {data_root} "
                             f"(--guard-data, else --data, else generated): {exc}. Give --guard-data whose images "
                             f"fit it, or use a fixed-canvas variant") from None


def cmd_models(args: argparse.Namespace) -> int:
    from deployzoo.zoo_listing import as_json, listing

    if args.json:
        import json

        print(json.dumps(as_json(), indent=1, allow_nan=False))
    else:
        print(listing(wide=args.wide))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from deployzoo.doctor import report

    print(report())
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from deployzoo import cache

    if args.cache_command == "list":
        print(cache.listing())
        return 0
    kinds = cache.KINDS if args.kind == "all" else (args.kind,)
    count, size = cache.clear(kinds)
    print(f"removed {count} files ({size / 1e6:.1f} MB) from {cache.cache_root()} ({', '.join(kinds)})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from deployzoo.engine import load_model
    from deployzoo.pipeline import export_model

    spec = _spec(args, _with_output(args.model, args.output))
    loaded = load_model(spec, args.checkpoint)
    _print_weights(loaded, args.verbose)
    result = export_model(loaded, args.out, batch_size=args.batch, dynamic_batch=args.dynamic_batch)
    ops = ", ".join(f"{k} x{v}" for k, v in result.op_types.items())
    batch = "dynamic" if result.batch is None else result.batch
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, opset {result.opset}, IR {result.ir_version}, batch {batch})")
    print(f"checker passed; default-domain ops only: {ops}")
    return 0


def _with_output(model: str, output: str | None) -> str:
    """The registry name of ``model`` with the graph contract ``output`` (segmentation: logits or labels)."""
    from deployzoo.registry import get_spec

    if output is None:
        return model
    spec = get_spec(model)
    if spec.task != "semantic-segmentation":
        raise DeployzooError(f"--output applies to segmentation models; {model} is a {spec.task} model")
    base, at, canvas = model.partition("@")
    base = base.removesuffix("-labels")
    name = base + ("-labels" if output == "labels" else "") + at + canvas
    get_spec(name)  # a clear error if that combination does not exist
    return name


def _print_weights(loaded, verbose: bool) -> None:
    if loaded.mapping_report is None:
        print(f"note: {loaded.weights}")
    else:
        print(loaded.mapping_report.format(verbose=verbose))


def _checked_onnx(path: str | None, spec, command: str, backend: str | None = None):
    """Check a user's .onnx before any work (one error line naming the file) and say what matters about it.
    ``spec``: the model the user named, or None (``bench FILE.onnx``: the file's metadata names it).
    ``backend``: the command's --backend; a PyTorch one would run the checkpoint and never read the file, so
    it is refused. Returns the spec to run it as (``spec`` itself when given)."""
    from deployzoo.export.onnx_export import check_onnx_for_model, inspect_onnx_file
    from deployzoo.registry import get_spec

    if path is None:
        return spec
    _refuse_onnx_backend(path, backend)
    info = inspect_onnx_file(path)
    name = check_onnx_for_model(info, spec, command)
    if spec is None:
        try:
            spec = get_spec(name)
        except DeployzooError as exc:
            raise BadInputError(path, f"was exported for '{name}', a model this deployzoo does not have ({exc})")
    if info.model is None:
        print(f"note: {path} has no deployzoo metadata; its inputs and outputs are {spec.name}'s, so it runs as "
              f"{spec.name}")
    if info.stand_in:
        print(f"note: {path} was exported from stand-in weights, not a checkpoint: its outputs and accuracy are "
              f"NOT those of the trained model")
    return spec


def _refuse_onnx_backend(path: str | None, backend: str | None) -> None:
    """--onnx with a PyTorch backend: that backend runs the checkpoint and would never read the file."""
    from deployzoo.backends import ONNX_BACKENDS

    if path is not None and backend is not None and backend not in ONNX_BACKENDS:
        raise DeployzooError(f"--onnx {path} is run by --backend {' or '.join(ONNX_BACKENDS)}; --backend {backend} "
                             "runs the model from --checkpoint and would never read the file: drop one of them")


def _with_misfits(exc: DeployzooError, spec, backend: str, batch: int, onnx: str | None, sizes,
                  skip_hint: bool = True) -> DeployzooError:
    """``exc`` refused bad input (unreadable image files, a dataset's bad entries); the same message also names
    the readable images the model cannot resize (an extreme aspect ratio) and, when the engine takes one input
    size, those it would refuse, so that one round shows every problem (else ``exc`` as it is). ``sizes``: a
    callable giving the readable images' {path: (H, W)} from their headers and the number of images asked for.
    ``skip_hint``: the command has --skip-bad."""
    from deployzoo.fixed_size import engine_input_hw, misfits, refusal, unresizable, unresizable_text

    try:
        readable, total = sizes()
        unusable = unresizable(spec, readable)
        fixed = engine_input_hw(spec, backend, batch, onnx)
        bad = misfits(spec, readable, fixed, backend) if fixed is not None else []  # skips the unresizable
    except Exception:  # noqa: BLE001  a .onnx or dataset that later checks refuse: exc, the first problem, stands
        return exc
    parts = []
    if unusable:
        parts.append(unresizable_text(unusable, total, offer=False))
    if bad:
        # --skip-bad helps only where some readable image is left: else it would refuse again, for these
        hint = skip_hint and len(bad) + len(unusable) < len(readable)
        parts.append(refusal(spec, backend, fixed, bad, total, hint))
    if not parts:
        return exc
    return DeployzooError(f"{exc}\nand besides, " + "\nand ".join(parts))


def _readable_sizes(paths: list[str]):
    """A callable for ``_with_misfits``: the (H, W) of those of ``paths`` whose header reads, by path, and how
    many paths there are."""
    def sizes() -> tuple[dict[str, tuple[int, int]], int]:
        from deployzoo.data.checks import image_header_hw

        out = {}
        for path in paths:
            try:
                out[str(path)] = tuple(image_header_hw(path))
            except BadInputError:
                continue
        return out, len(paths)

    return sizes


def _refuse_unresizable(spec, sizes: dict[str, tuple[int, int]], skipped: list[dict[str, str]], skip_bad: bool | None
                        ) -> tuple[list[str], list[dict[str, str]]]:
    """Images whose size the model's resize makes 0 pixels on a side (an extreme aspect ratio) are named before
    anything is built, or with ``skip_bad`` left out (refused when nothing is left). ``skip_bad`` None: the
    command has no --skip-bad. ``sizes``: each image's (H, W) from its header, by path, in order."""
    from deployzoo.fixed_size import unresizable, unresizable_text

    images = list(sizes)
    bad = unresizable(spec, sizes)
    if not bad:
        return images, skipped
    if not skip_bad or len(bad) == len(images):
        # --skip-bad is offered where it helps: some image is left, and the command has it (skip_bad is None: not)
        offer = skip_bad is not None and len(bad) < len(images)
        if len(bad) == 1:
            raise BadInputError(bad[0]["path"], bad[0]["problem"] + "; nothing was built or run" +
                                (" (--skip-bad leaves it out)" if offer else ""))
        raise DeployzooError(unresizable_text(bad, len(images), offer))
    left = {b["path"] for b in bad}
    return [p for p in images if p not in left], skipped + bad


def _fit_fixed_size(spec, args: argparse.Namespace, sizes: dict[str, tuple[int, int]], skipped: list[dict[str, str]]
                    ) -> tuple[list[str], list[dict[str, str]]]:
    """An engine of one input size (pytorch-aoti, a .onnx with fixed height and width) meets only images that
    become that size: the others are refused, naming them, or with --skip-bad left out, before anything is built."""
    from deployzoo.fixed_size import engine_input_hw, hint, misfits, needed_hw, refusal

    images = list(sizes)
    fixed = engine_input_hw(spec, args.backend, args.batch, args.onnx)
    if fixed is None:
        return images, skipped
    bad = misfits(spec, sizes, fixed, args.backend)
    if bad and len(bad) == len(images):  # --skip-bad or not: nothing to build the engine for
        raise DeployzooError(refusal(spec, args.backend, fixed, bad, len(images), skip_hint=False))
    if bad and not args.skip_bad:
        if len(bad) == 1:
            raise BadInputError(bad[0]["path"], bad[0]["problem"] + hint(spec, args.backend, fixed, needed_hw(bad))
                                + "; nothing was built or run (--skip-bad leaves it out)")
        raise DeployzooError(refusal(spec, args.backend, fixed, bad, len(images)))
    left = {b["path"] for b in bad}
    return [p for p in images if p not in left], skipped + [{"path": b["path"], "problem": b["problem"]} for b in bad]


def _split_sizes(spec, data: str, limit: int | None):
    """A callable for ``_with_misfits``: the sizes of a dataset's images that pass its checks, from a second look
    that leaves the bad ones out (annotations and headers only), and how many images were to run."""
    def sizes() -> tuple[dict[str, tuple[int, int]], int]:
        kept = spec.evaluation.validate(data, skip_bad=True, limit=limit)
        return kept.sizes_by_path(), len(kept.sizes) + len(kept.skipped)

    return sizes


def _check_data(spec, data, skip_bad: bool = False, limit: int | None = None):
    """The dataset at ``data`` checked whole (annotations, image headers) before any weights are loaded."""
    checked = spec.evaluation.validate(data, skip_bad=skip_bad, limit=limit)
    for s in checked.skipped:
        print(f"warning: skipped {s['path'] + ': ' if 'path' in s else ''}{s['problem']}", file=sys.stderr)
    return checked


def _ray_address(text: str) -> str:
    """--ray ADDRESS: 'local' (a cluster on this machine's CPUs), 'auto' or a cluster address. Ray must be
    installed: said here, before any work (deployzoo[ray] is an optional extra)."""
    from deployzoo.distributed import require_ray

    if Path(text).exists():  # `--ray image.jpg`: an image taken for the address
        raise argparse.ArgumentTypeError(f"'{text}' is a file, not a Ray address: put --ray after the images, or "
                                         f"write --ray local")
    try:
        require_ray()
    except DeployzooError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", nargs="?", const="local", default=None, type=_ray_address, metavar="ADDRESS",
                   help="spread the images over a Ray cluster (pip install 'deployzoo[ray]'): 'local' (no ADDRESS) "
                        "starts one on this machine's CPUs; an address (auto, host:6379, ray://host:10001) joins one")
    p.add_argument("--replicas", type=whole_number(1, "engine copies"), default=None,
                   help="--ray: engine copies (default: the cluster's CPUs // --threads-per-replica)")
    p.add_argument("--threads-per-replica", type=whole_number(1, "threads"), default=1, help="--ray: CPU threads per engine copy")
    p.add_argument("--shard-images", type=whole_number(1, "images"), default=None,
                   help="--ray: images per work shard, rounded up to whole batches (default: about 4 shards per "
                        "replica, at most 64 images)")


def _ray_runner(args: argparse.Namespace, engine, precision: str):
    """--ray: the run's images over replicas of ``engine`` on a Ray cluster (deployzoo.distributed.ray_eval)."""
    from deployzoo.distributed.ray_eval import RayRunner, source_from_engine

    source = source_from_engine(engine, args.backend, args.checkpoint, precision, getattr(args, "device", "cpu"))
    return RayRunner(source, address=args.ray, replicas=args.replicas, threads_per_replica=args.threads_per_replica,
                     shard_size=args.shard_images)


def cmd_predict(args: argparse.Namespace) -> int:
    from deployzoo.pipeline import open_engine, predict_files
    from deployzoo.predictions import write_predictions

    from deployzoo.data.inputs import check_image_files, output_names
    from deployzoo.fixed_size import header_sizes

    refuse_precision(args.backend, args.precision, args.auto_precisions)
    spec = _spec(args)
    _checked_onnx(args.onnx, spec, "predict", args.backend)
    _guard_can_open(args.onnx, args.precision)
    # Every input looked at before weights load (seconds, nothing written): each can have its own output
    # names, and each image file's header is readable.
    output_names(args.images)
    try:
        images, skipped = check_image_files(args.images, skip_bad=args.skip_bad)
    except DeployzooError as exc:
        raise _with_misfits(exc, spec, args.backend, args.batch, args.onnx, _readable_sizes(args.images)) from None
    sizes = header_sizes(images)  # read once for both checks below
    images, skipped = _refuse_unresizable(spec, sizes, skipped, args.skip_bad)
    images, skipped = _fit_fixed_size(spec, args, {p: sizes[p] for p in images}, skipped)
    for s in skipped:
        print(f"warning: skipped {s['path']}: {s['problem']}", file=sys.stderr)
    out = Path(args.out)
    precision, _ = _resolve_precision(args, spec, args.backend, out, onnx=args.onnx)
    engine = open_engine(spec, args.backend, args.batch, args.checkpoint, args.onnx, work_dir=out, threads=args.threads,
                         precision=precision, calibration=_calibration(args))
    if engine.loaded is not None:
        _print_weights(engine.loaded, args.verbose)
    failed: list[dict[str, str]] = []  # images whose header was fine but whose data does not decode
    records = predict_files(engine, images, score_threshold=args.score_thr, max_dets=args.max_dets, out_dir=out,
                            skipped=failed, runner=_ray_runner(args, engine, precision) if args.ray else None)
    path = write_predictions(out / "predictions.json", records)
    _write_predict_info(out, spec, engine, args, skipped + failed)
    done = len(images) - len(failed)
    if spec.task == "semantic-segmentation":
        print(f"{len(records)} label maps -> {path} and {out / 'label_maps'}/*.png")
    else:
        print(f"{len(records)} detections on {done} images -> {path}")
    if args.draw:
        from deployzoo.pictures import PICTURE_DIR, predict_pictures

        pictures = predict_pictures(spec, images, records, out, stand_in="stand-in" in engine.weights,
                                    score_threshold=args.draw_thr, skip=[f["path"] for f in failed])
        print(f"{len(pictures)} pictures -> {out / PICTURE_DIR}/*.png (--no-draw to skip)")
    if skipped or (failed and args.skip_bad):
        print(f"{len(skipped) + len(failed)} of {len(args.images)} images skipped as bad input (warnings above)")
    if failed and not args.skip_bad:
        listed = "; ".join(f"{f['path']}: {f['problem']}" for f in failed[:5])
        # "failed" holds decode failures and images whose engine outputs were not finite: name the problem of
        # each, not one cause for all
        raise DeployzooError(f"{len(failed)} image(s) gave no result ({listed}); the predictions of the other "
                             f"{done} are in {path} (--skip-bad leaves such images out)")
    return 0


def _write_predict_info(out: Path, spec, engine, args: argparse.Namespace, skipped: list[dict[str, str]]) -> None:
    """DIR/predict.json beside predictions.json (a list, the contract): what made it: the engine, the model's
    test-time settings (deployzoo.test_settings), predict's own filters on the model's output, and the images
    that gave no result (``images_skipped``: ``{"path", "problem"}`` each, as eval's metrics.json lists them)."""
    from deployzoo.jsonio import write_json
    from deployzoo.test_settings import report_fields

    info = {"model": spec.name, "class_names": list(spec.class_names), "weights": engine.weights,
            **report_fields(spec), "filters": {"score_thr": args.score_thr, "max_dets": args.max_dets},
            "images_skipped": [{"path": s["path"], "problem": s["problem"]} for s in skipped]}
    if hasattr(engine.backend, "describe"):  # test doubles may lack it
        info["engine"] = engine.describe()
    write_json(out / "predict.json", info)


def cmd_eval(args: argparse.Namespace) -> int:
    from deployzoo.registry import get_spec
    from deployzoo.tasks.protocol_choice import choose_protocol, protocol_equals
    from deployzoo.pipeline import dump_infer, evaluate_dataset, fingerprint_file, open_engine, split_names

    args.protocol = choose_protocol(get_spec(args.model).evaluation, args.protocol)  # refused before any file is read
    if not args.dumps:
        refuse_precision(args.backend, args.precision, args.auto_precisions)
        _refuse_onnx_backend(args.onnx, args.backend)
    spec = _spec(args)
    out = Path(args.out or f"runs/eval-{spec.name}-{args.backend}-{args.precision}")
    from deployzoo.eval.coco_eval import check_evaluator

    check_evaluator(args.coco_evaluator)  # installed, before any weights load
    try:
        checked = _check_data(spec, args.data, skip_bad=args.skip_bad, limit=args.limit)
    except DeployzooError as exc:
        if args.skip_bad or args.dumps:
            raise
        raise _with_misfits(exc, spec, args.backend, args.batch, args.onnx, _split_sizes(spec, args.data, args.limit)
                            ) from None
    runner = None  # the local pipeline, unless --ray
    if args.dumps and args.ray is not None:
        raise DeployzooError("--dumps evaluates outputs already computed, --ray computes them on a cluster: drop one")
    if args.dumps:
        names = split_names(checked.dataset)  # the .bin names `data to-bin --data` gave these images
        infer = dump_infer(spec, args.dumps, {i: names[i] for i in checked.ids})
        fingerprint = {"model": spec.name, "engine": "dumps", "dumps": str(Path(args.dumps).resolve())}
        describe = {"backend": "vendor dumps", "directory": args.dumps}
    else:
        _checked_onnx(args.onnx, spec, "eval", args.backend)
        _guard_can_open(args.onnx, args.precision)
        from deployzoo.fixed_size import refuse_misfits

        # Images the model cannot resize: named now; with --skip-bad skipped and listed at their turn.
        _refuse_unresizable(spec, checked.sizes_by_path(), [], args.skip_bad)
        # With --skip-bad the run skips and lists each such image when its turn comes, unless none fits.
        refuse_misfits(spec, args.backend, checked.sizes_by_path(), args.batch, args.onnx, skip_hint=True,
                       skip_bad=args.skip_bad)
        precision, guard = _resolve_precision(args, spec, args.backend, out, onnx=args.onnx, data=args.data)
        engine = open_engine(spec, args.backend, args.batch, args.checkpoint, args.onnx, work_dir=out, threads=args.threads,
                             precision=precision, calibration=_calibration(args, args.data))
        if engine.loaded is not None:
            _print_weights(engine.loaded, args.verbose)
        infer = engine.infer
        fingerprint = {"model": spec.name, "backend": args.backend, "precision": precision, "weights": engine.weights,
                       "checkpoint": fingerprint_file(args.checkpoint), "onnx": fingerprint_file(engine.onnx_path)}
        if guard is not None:  # auto's timings vary from run to run: they stay out of what --resume compares
            fingerprint["accuracy_guard"] = {k: v for k, v in guard.items() if k != "auto"}
        describe = engine.describe()
        if args.ray is not None:  # replicas of this engine over a Ray cluster (deployzoo.distributed.ray_eval)
            runner = _ray_runner(args, engine, precision)
    outcome = evaluate_dataset(spec, args.data, infer, args.batch, out, fingerprint, protocol=args.protocol,
                               resume=args.resume, skip_bad=args.skip_bad, workers=args.workers, limit=args.limit,
                               runner=runner, checked=checked, coco_evaluator=args.coco_evaluator)
    print(outcome.metrics.table())
    print()
    print(f"Stages ({describe.get('backend')}, {describe.get('precision', 'fp32')}, batch {args.batch}):")
    print(outcome.run.timer.table())
    if outcome.run.extra.get("ray"):
        from deployzoo.distributed.ray_eval import format_report

        print(format_report(outcome.run.extra["ray"]))
    skipped = outcome.summary["images_skipped"]
    if skipped:
        print(f"\n{len(skipped)} images skipped as bad input (listed in metrics.json)")
    non_finite = outcome.summary.get("non_finite_outputs") or {}
    if non_finite.get("images"):
        from deployzoo.nonfinite import summary_line

        print(f"warning: the engine's outputs are not finite (NaN or infinite) on {summary_line(non_finite)}: "
              f"those images are skipped and the figure below leaves them out")
    equals = protocol_equals(spec.evaluation, outcome.summary['protocol'])
    print(f"\n{spec.evaluation.metric_name} ({outcome.summary['protocol']} protocol{', = ' + equals if equals else ''}): "
          f"{headline_text(outcome.headline, spec.evaluation.metric_name)}")
    # The published figure on a line of its own: beside a stand-in or synthetic-data figure it reads like a
    # comparison (issue 18 item 2).
    if "stand-in" in str(fingerprint.get("weights", "")):
        print("  measured with stand-in weights: it says nothing about the trained model's accuracy")
    print(f"published figure of the trained model: {spec.published.value} ({spec.published.source})"
          if spec.published.value is not None else f"published figure: {spec.published.source}")
    from deployzoo.score import policy_lines

    for line in policy_lines(outcome.summary):  # skipped images: both figures, and not comparable
        print(line)
    if outcome.run.resumed:
        print(f"resumed: {outcome.run.resumed} images taken from the interrupted run, {outcome.run.computed} computed now")
    results = "predictions.json and label_maps/" if spec.task == "semantic-segmentation" else "detections.json"
    print(f"wrote {out / 'metrics.json'} and {out / results}")
    stand_in = "stand-in" in str(fingerprint.get("weights", ""))
    pictures = []
    if args.pictures > 0:
        from deployzoo.pictures import PICTURE_DIR, eval_pictures

        pictures = eval_pictures(spec, outcome.run.results, outcome.annotations, checked.dataset.image_path, out,
                                 count=args.pictures, stand_in=stand_in)
        print(f"wrote {len(pictures)} pictures to {out / PICTURE_DIR} (the first {args.pictures} images and the "
              f"{args.pictures} that disagree most with the ground truth; --pictures 0 skips them)")
    from deployzoo.run_report import eval_markdown, protocol_reference

    (out / "report.md").write_text(eval_markdown(
        spec, outcome.summary, outcome.metrics.table(), outcome.run.timer.table(), out, pictures=pictures,
        stand_in=stand_in, protocol_reference=protocol_reference(spec.evaluation, outcome.summary["protocol"]),
        engine=f"{describe.get('backend')} {describe.get('precision', 'fp32')}, batch {args.batch}"))
    print(f"wrote {out / 'report.md'} (the figures, pictures and files, explained)")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from deployzoo.score import run_score_command

    return run_score_command(args)


def _guard_can_open(onnx_path: str | Path | None, precision: str) -> None:
    """A user's ONNX file below fp32 (bench, predict, eval, compare): the accuracy guard (and auto's timing) opens it
    at batch 1, so a file fixed to another batch is refused now, before the guard's data is made, rather than by
    the guard's engine with a message about a batch 1 the user never asked for. No file, or fp32: nothing to check."""
    if onnx_path is None or precision == "fp32":
        return
    from deployzoo.onnx_batch import fixed_batch

    fixed = fixed_batch(onnx_path)
    if fixed is not None and fixed != 1:
        raise BadInputError(onnx_path, f"its input is fixed to batch {fixed}, but the accuracy guard of --precision "
                                       f"{precision} runs it at batch 1; export with --dynamic-batch (or --batch 1), "
                                       f"or run it at fp32 (nothing was run)")


def cmd_bench(args: argparse.Namespace) -> int:
    from deployzoo.backends import ONNX_BACKENDS
    from deployzoo.bench.pure import bench_sweep
    from deployzoo.bench.report import environment, sweep_table, write_csv, write_json
    from deployzoo.cache import backend_cache_dir, cached_onnx
    from deployzoo.engine import load_model, make_backend
    from deployzoo.registry import get_spec

    _check_bench_mode(args)
    if args.e2e:
        return _bench_e2e(args)
    _check_device(args.device)
    refuse_precision(args.backend, args.precision, args.auto_precisions)
    args.warmup = 3 if args.warmup is None else args.warmup
    out = Path(args.out or "runs/bench")
    target = args.model
    loaded = None
    if args.onnx is not None or target.endswith(".onnx") or Path(target).is_file():
        onnx_path = args.onnx or target  # `bench MODEL --onnx FILE`, or `bench FILE` (its metadata names the model)
        spec = _checked_onnx(onnx_path, None if args.onnx is None else get_spec(target), "bench")
        spec = _spec(args, spec.name, onnx=onnx_path)
        if args.backend not in ONNX_BACKENDS:
            raise DeployzooError(f"{onnx_path} is an ONNX file: choose --backend {' or '.join(ONNX_BACKENDS)}")
        from deployzoo.onnx_batch import check_batch_sizes

        check_batch_sizes(onnx_path, args.batch)  # a file fixed to batch 1 cannot time batch 4: say so first
        _guard_can_open(onnx_path, args.precision)
        onnx_files = {b: Path(onnx_path) for b in args.batch}
    else:
        spec = _spec(args, target)
        loaded = load_model(spec, args.checkpoint)
        onnx_files = {}
        if args.backend in ONNX_BACKENDS:
            for b in args.batch:
                onnx_files[b] = cached_onnx(loaded, batch_size=b).path
    # The guard and auto's timing run at batch 1: the batch-1 file (exported by _resolve_precision when --batch
    # leaves it out), or the user's file, which _guard_can_open checked opens at batch 1.
    guard_onnx = onnx_files.get(1) if loaded is not None else next(iter(onnx_files.values()), None)
    precision, guard = _resolve_precision(args, spec, args.backend, out, loaded=loaded, onnx=guard_onnx,
                                          data=args.data)

    def make(batch: int):
        model = loaded.model if loaded is not None else None
        return make_backend(args.backend, spec, batch, onnx_path=onnx_files.get(batch), model=model, threads=args.threads,
                            precision=precision, cache_dir=backend_cache_dir(args.backend), device=args.device,
                            calibration=_calibration(args, args.data))

    results = bench_sweep(make, args.batch, inputs_for=spec.make_example_inputs, warmup=args.warmup, min_iters=args.iters,
                          min_seconds=args.min_seconds, native=args.native)
    print(sweep_table(results))
    for r in results:
        if r.ok and r.stats.variation_warning():
            print(f"warning (batch {r.batch_size}): {r.stats.variation_warning()}")
        if r.ok and r.overhead:
            o = r.overhead
            print(f"harness overhead (batch {r.batch_size}): ours {o['ours_images_per_s']:.3f} images/s, "
                  f"{r.name}'s own loop {o['native_images_per_s']:.3f} images/s: ratio {o['ratio']:.3f} "
                  f"({100 * (o['ratio'] - 1):+.1f}%; {o['iterations']} calls each, interleaved)")
    payload = {"model": spec.name, "mode": "pure inference", "precision": precision, "accuracy_guard": guard,
               "environment": environment(), "results": [r.to_dict() for r in results]}
    stem = f"bench-{args.backend}-{precision}"
    write_json(out / f"{stem}.json", payload)
    write_csv(out / f"{stem}.csv", [_bench_row(spec.name, r) for r in results])
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.csv')}")
    return 0 if all(r.ok for r in results) else 1


# bench's two modes take different options; one given to the other mode would be ignored without a word.
_BENCH_E2E_ONLY = {"backends": "--backends", "precisions": "--precisions", "images": "--images",
                   "num_images": "--num-images", "repeats": "--repeats"}
_BENCH_PURE_ONLY = {"backend": "--backend", "batch": "--batch", "iters": "--iters", "min_seconds": "--min-seconds",
                    "native": "--no-native", "onnx": "--onnx", "data": "--data", "precision": "--precision",
                    "guard_images": "--guard-images", "guard_tolerance": "--guard-tolerance",
                    "guard_data": "--guard-data", "auto_precisions": "--auto-precisions",
                    "calibration_data": "--calibration-data", "calibration_images": "--calibration-images"}


def _check_bench_mode(args: argparse.Namespace) -> None:
    """Refuse options of the other mode (``args.given``: the options the command line set, see ``main``)."""
    given = getattr(args, "given", set())
    if args.e2e:
        wrong = [flag for dest, flag in _BENCH_PURE_ONLY.items() if dest in given]
        if wrong:
            raise DeployzooError(
                f"{', '.join(wrong)} {'belongs' if len(wrong) == 1 else 'belong'} to the pure-inference benchmark, "
                "not to --e2e (which runs at batch 1 every engine of --backends x --precisions, unguarded, on "
                f"the model's own export); drop {'it' if len(wrong) == 1 else 'them'}"
                + ("; engines and precisions are chosen with --backends/--precisions"
                   if {"--backend", "--precision"} & set(wrong) else ""))
    else:
        wrong = [flag for dest, flag in _BENCH_E2E_ONLY.items() if dest in given]
        if wrong:
            raise DeployzooError(
                f"{', '.join(wrong)} {'applies' if len(wrong) == 1 else 'apply'} to --e2e only; add --e2e for the "
                "end-to-end benchmark, or use --backend/--precision/--batch for pure inference")


def _check_device(device: str) -> None:
    """--device refused before any work: a bad one failed inside a cell, and bench --e2e runs its yardstick on the
    CPU whatever --device says, so a wrong one went unnoticed there."""
    from deployzoo.backends.pytorch_backend import resolve_device

    resolve_device(device)


def _given_options(argv: list[str], command: str, dests) -> set[str]:
    """Which of ``dests`` the command line sets for ``command``: the same arguments parsed again with those
    options' defaults suppressed, so abbreviations and ``--opt=value`` count exactly as argparse reads them."""
    parser = build_parser()
    # Each action's own default, not set_defaults: argparse would run a parser-level default string through the
    # option's type (and a suppressed action default is simply left out of the namespace).
    for action in parser.commands[command]._actions:
        if action.dest in dests:
            action.default = argparse.SUPPRESS
    namespace, _ = parser.parse_known_args(argv)
    return {dest for dest in dests if getattr(namespace, dest, argparse.SUPPRESS) != argparse.SUPPRESS}


def _bench_e2e(args: argparse.Namespace) -> int:
    """``bench --e2e``: the whole chain per image, engines interleaved, against eager PyTorch fp32."""
    from deployzoo.bench.e2e import bench_e2e
    from deployzoo.bench.report import write_json
    from deployzoo.data.loader import ImageItem, items_from_paths
    from deployzoo.engine import load_model

    from deployzoo.data.inputs import check_image_files
    from deployzoo.precision import PRECISIONS

    if args.model.endswith(".onnx") or Path(args.model).is_file():
        raise DeployzooError(f"bench --e2e times the whole chain from a registry model (its own export and eager "
                             f"PyTorch yardstick), not a given file ({args.model}); give the model's name, and "
                             "--checkpoint for its weights")
    if args.images and "num_images" in getattr(args, "given", set()):
        raise DeployzooError("--num-images sets how many images are generated when no --images are given; with "
                             "--images every listed file is used: drop one of them")
    _check_device(args.device)
    spec = _spec(args)
    out = Path(args.out or f"runs/bench-e2e-{spec.name}")
    backends = _checked_names(args.backends, "--backends", list(BACKENDS))
    precisions = _checked_names(args.precisions, "--precisions", list(PRECISIONS))
    if args.images:
        check_image_files(args.images, offers_skip_bad=False)  # every file, before any model or engine is built
        from deployzoo.fixed_size import header_sizes

        _refuse_unresizable(spec, header_sizes(args.images), [], None)
        items = items_from_paths(args.images)
        note = f"{len(items)} image file(s) given on the command line"
    else:
        root = spec.evaluation.make_synthetic(out / "synthetic-data", num_images=args.num_images, seed=0)
        dataset = spec.evaluation.open(root)
        items = [ImageItem(i, str(dataset.image_path(i))) for i in dataset.ids[: args.num_images]]
        note = (f"no --images given: {len(items)} generated synthetic images in the {spec.evaluation.dataset_name} "
                f"layout ({root}), at the dataset's usual image sizes")
    print(f"note: {note}")
    loaded = load_model(spec, args.checkpoint)
    _print_weights(loaded, args.verbose)
    result = bench_e2e(spec, loaded, items, backends, precisions, out, repeats=args.repeats,
                       warmup=1 if args.warmup is None else args.warmup, threads=args.threads, device=args.device,
                       image_note=note)
    print(result.table())
    for row in result.rows():
        if row["status"] == "failed":
            print(f"warning: {row['engine']} failed: {row['error']}")
    stem = f"e2e-{spec.name}"
    write_json(out / f"{stem}.json", result.to_dict() | {"weights": loaded.weights})
    (out / f"{stem}.md").write_text(result.markdown() + f"\nWeights: {loaded.weights}.\n")
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    return 0 if all(r["status"] != "failed" for r in result.rows()) else 1


def _bench_row(model: str, r) -> dict:
    row = {"model": model, "backend": r.name, "precision": r.precision, "batch": r.batch_size, "error": r.error}
    if r.ok:
        row.update({k: v for k, v in r.stats.to_dict().items()})
        if r.overhead:
            row.update({"native_images_per_s": r.overhead["native_images_per_s"], "overhead_ratio": r.overhead["ratio"]})
    return row


def cmd_compare(args: argparse.Namespace) -> int:
    from deployzoo.engine import load_model
    from deployzoo.pipeline import open_engine
    from deployzoo.verify import compare_engines
    from deployzoo.bench.report import write_json

    refuse_precision(args.backend, args.precision, args.auto_precisions)
    spec = _spec(args)
    _checked_onnx(args.onnx, spec, "compare", args.backend)
    _guard_can_open(args.onnx, args.precision)
    out = Path(args.out or f"runs/compare-{spec.name}-{args.backend}-{args.precision}")
    checked = _check_data(spec, args.data, limit=args.num_images) if args.data and not args.images else None
    if args.images:  # each listed image given once and readable (header), before the model is built or exported
        from deployzoo.data.inputs import check_image_files, output_names

        output_names(args.images)
        try:
            check_image_files(args.images, offers_skip_bad=False)
        except DeployzooError as exc:
            raise _with_misfits(exc, spec, args.backend, args.batch, args.onnx, _readable_sizes(args.images),
                                skip_hint=False) from None
    items = _compare_items(spec, args, out, checked)
    from deployzoo.fixed_size import header_sizes, refuse_misfits

    sizes = header_sizes([item.path for item in items])
    _refuse_unresizable(spec, sizes, [], None)
    refuse_misfits(spec, args.backend, sizes, args.batch, args.onnx)
    loaded = load_model(spec, args.checkpoint)
    _print_weights(loaded, args.verbose)
    precision, _ = _resolve_precision(args, spec, args.backend, out, loaded=loaded, onnx=args.onnx, data=args.data)
    engine = open_engine(spec, args.backend, args.batch, onnx_path=args.onnx, work_dir=out, threads=args.threads,
                         loaded=loaded, precision=precision, calibration=_calibration(args, args.data))
    reference = open_engine(spec, "pytorch", 1, loaded=loaded)
    agreement = compare_engines(engine, reference, items)
    print(agreement.table())
    write_json(out / "compare.json", agreement.to_dict())
    print(f"wrote {out / 'compare.json'}")
    if args.draw != "none":
        from deployzoo.pictures import PICTURE_DIR, compare_pictures

        describe = lambda e: f"{e.describe().get('backend')} {e.describe().get('precision', 'fp32')}"  # noqa: E731
        pictures = compare_pictures(spec, agreement.results, out, describe(engine), describe(reference),
                                    stand_in=loaded.is_stand_in, every=args.draw == "all")
        print(f"{len(pictures)} side-by-side pictures (engine | reference) of the {agreement.images} images "
              f"-> {out / PICTURE_DIR}" + ("" if args.draw == "all" else " (only images where they differ)"))
    return 0 if agreement.ok else 1


def _compare_items(spec, args, out: Path, checked=None):
    from deployzoo.data.loader import ImageItem, items_from_paths

    if args.images:
        return items_from_paths(args.images)
    if checked is not None:
        return [ImageItem(i, str(checked.dataset.image_path(i))) for i in checked.ids]
    data = args.data
    if data is None:
        data = spec.evaluation.make_synthetic(out / "synthetic-data", num_images=args.num_images)
        print(f"note: no --data or images given: using {args.num_images} generated synthetic images under {data}")
    dataset = spec.evaluation.open(data)
    return [ImageItem(i, str(dataset.image_path(i))) for i in dataset.ids[: args.num_images]]


def cmd_data(args: argparse.Namespace) -> int:

    spec = _spec(args)
    if args.data_command == "to-bin":
        from deployzoo.data.inputs import check_image_files, output_names
        from deployzoo.pipeline import split_names, write_bins

        paths = list(args.images)
        names = output_names(paths)
        if paths:
            check_image_files(paths, offers_skip_bad=False)  # every listed image's header, before any .bin
        if args.data:
            checked = _check_data(spec, args.data, limit=args.limit)
            split = split_names(checked.dataset)  # the names `eval --dumps` looks for, whatever --limit is
            paths += [str(checked.dataset.image_path(i)) for i in checked.ids]
            names += [split[i] for i in checked.ids]
        if not paths:
            raise DeployzooError("give image files or --data DIR")
        info, images_info = write_bins(spec, paths, args.out, workers=args.workers, names=names)
        print(f"wrote {len(paths)} .bin files, {info} (network input sizes) and {images_info} (original sizes)")
        return 0
    if args.data_command == "synthetic":
        root = spec.evaluation.make_synthetic(args.out, num_images=args.num_images, seed=args.seed)
        print(f"wrote a synthetic {spec.evaluation.dataset_name} dataset with {args.num_images} images at {root}")
        return 0
    raise DeployzooError(f"unknown data command {args.data_command}")


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _checked_names(text: str, option: str, allowed) -> list[str]:
    """A comma-separated option's names: at least one, each in ``allowed``, none twice (refused before any work:
    an empty list would run nothing and a repeated name would run the same cells again)."""
    names = _name_list(text)
    if not names:
        raise DeployzooError(f"{option} names nothing (got '{text}'); give comma-separated names from: "
                             f"{', '.join(allowed)}")
    for name in names:
        if name not in allowed:
            raise DeployzooError(f"unknown {option.lstrip('-').rstrip('s')} '{name}' in {option}; available: "
                                 f"{', '.join(allowed)}")
    repeated = _repeated(names)
    if repeated:
        raise DeployzooError(f"{option} names {', '.join(repeated)} more than once")
    return names


def cmd_matrix(args: argparse.Namespace) -> int:
    from deployzoo.bench.matrix_report import best_batch_table, matrix_table, status_counts, write_matrix_reports
    from deployzoo.bench.report import environment
    from deployzoo.matrix import Matrix, MatrixSettings
    from deployzoo.precision import PRECISIONS
    from deployzoo.registry import get_spec, model_names

    models = model_names() if args.models.strip() == "all" else _name_list(args.models)
    if args.models.strip() != "all" and "all" in models:
        raise DeployzooError(f"--models 'all' stands alone (got '{args.models}'): it already names every model")
    for m in models:
        get_spec(m)  # an unknown name fails before anything runs
    backends = _checked_names(args.backends, "--backends", list(BACKENDS))
    precisions = _checked_names(args.precisions, "--precisions", list(PRECISIONS))
    if not models:
        raise DeployzooError(f"--models names nothing (got '{args.models}'); give 'all' or registry names")
    repeated = _repeated(models)
    if repeated:
        raise DeployzooError(f"--models names {', '.join(repeated)} more than once")
    settings = MatrixSettings(warmup=args.warmup, min_iters=args.iters, min_seconds=args.min_seconds,
                              threads=args.threads, overhead=args.overhead, guard_images=args.guard_images,
                              guard_tolerance=args.guard_tolerance, data=args.data, checkpoint=args.checkpoint,
                              classes=args.classes, device=args.device, cell_timeout=args.cell_timeout,
                              test_settings=_test_settings(args))
    if settings.test_settings:
        from deployzoo.test_settings import check_settings

        for m in models:  # a setting a model lacks is refused before any cell
            check_settings(get_spec(m), **settings.test_settings)
    if args.cell_timeout is not None and args.cell_timeout <= 0:
        raise DeployzooError(f"--cell-timeout must be a positive number of seconds, got {args.cell_timeout:g}")
    matrix = Matrix(models, backends, precisions, args.batch, args.out, settings, resume=not args.fresh)
    if args.checkpoint is not None:  # a bad or foreign checkpoint: one error now, not a failure in every cell
        from deployzoo.engine import load_model

        load_model(get_spec(models[0]), args.checkpoint)
    if args.data is not None and any(p != "fp32" for p in precisions):  # the guard's dataset: checked once, now
        for task in {id(get_spec(m).evaluation): get_spec(m).evaluation for m in models}.values():
            task.validate(args.data, limit=args.guard_images)
    if args.ray is not None:  # cells as Ray tasks, one per node at a time on all its CPUs
        from deployzoo.distributed.ray_matrix import run_matrix_on_ray

        cells = run_matrix_on_ray(matrix, args.ray)
    else:
        cells = matrix.run()
    env = environment() | {"threads": args.threads or "backend default"}
    paths = write_matrix_reports(args.out, cells, env)
    print(matrix_table(cells))
    print()
    print(best_batch_table(cells))
    print()
    print(status_counts(cells))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from deployzoo.job import run_main_job

    from deployzoo.registry import get_spec

    # Unset options take the model's run defaults (a two-stage COCO model is ~30x slower than RefineDet).
    defaults = {"batch_sizes": [1, 2, 4], "eval_batch": 4, "num_images": 12, "bench_seconds": 3.0,
                **get_spec(args.model).run_defaults}
    given = {"batch_sizes": args.batch, "eval_batch": args.eval_batch, "num_images": args.num_images,
             "bench_seconds": args.min_seconds}
    settings = {k: defaults[k] if given[k] is None else given[k] for k in given}
    run_main_job(args.model, out_dir=args.out, checkpoint=args.checkpoint, data=args.data, protocol=args.protocol,
                 threads=args.threads, workers=args.workers, **settings, **_fine_tune_kwargs(args),
                 **{k: v for k, v in defaults.items() if k not in settings})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deployzoo", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="print the full checkpoint key mapping, tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    # --verbose is accepted after the command name too (SUPPRESS keeps the top-level value otherwise)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="print the full checkpoint key mapping, tracebacks")

    parser.commands = {}  # name -> its subparser (main's _given_options reads bench's)

    def command(subparsers, name: str, **kw) -> argparse.ArgumentParser:
        parser.commands[name] = subparsers.add_parser(name, parents=[common], **kw)
        return parser.commands[name]

    p = command(sub, "models", help="list the zoo: architectures, registry names, variants (fits 100 columns)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--wide", action="store_true", help="also each checkpoint's file format (long lines)")
    g.add_argument("--json", action="store_true", help="everything about every model as JSON")
    p.set_defaults(func=cmd_models)
    command(sub, "doctor", help="what is usable here: backends and versions, CPU features (AVX-512, VNNI, bf16, "
                                "AMX), GPU, threads, engine cache").set_defaults(func=cmd_doctor)

    p = command(sub, "cache", help="the engine cache: exported ONNX, OpenVINO IRs, AOTInductor packages "
                                    "($DEPLOYZOO_CACHE, default ~/.cache/deployzoo)")
    cache_sub = p.add_subparsers(dest="cache_command", required=True)
    command(cache_sub, "list", help="where the cache is, its entries and sizes").set_defaults(func=cmd_cache)
    q = command(cache_sub, "clear", help="delete cached engines (they are rebuilt when next needed)")
    q.add_argument("--kind", default="all", choices=["all", "onnx", "openvino", "int8", "aoti"],
                   help="only this kind of entry (default: all)")
    q.set_defaults(func=cmd_cache)

    p = command(sub, "export", help="export a model to ONNX")
    p.add_argument("model", help="registry name (see `deployzoo models`)")
    p.add_argument("--checkpoint", help="official checkpoint file; without it, deterministic stand-in weights "
                                         "(the file's metadata says so)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch", type=_batch_size, default=1, help="fixed batch size of the graph (default 1)")
    g.add_argument("--dynamic-batch", action="store_true", help="a free batch dimension instead of a fixed one")
    p.add_argument("--output", choices=["logits", "labels"],
                   help="segmentation graph contract: seg logits at the network input (default) or the uint8 "
                        "label map at the original size (the model name then gets '-labels')")
    p.set_defaults(func=cmd_export)

    p = command(sub, "predict", help="detect objects in image files; writes DIR/predictions.json")
    _add_engine_args(p)
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...), in any order among the options")
    p.add_argument("--out", required=True, help="results folder: predictions.json, predict.json (engine, test "
                                                "settings, filters), label_maps/, pictures/ (no model files: those "
                                                "go to the engine cache)")
    p.add_argument("--batch", type=_batch_size, default=1, help="images per inference call (default 1)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out unusable images with a warning (counted) instead of stopping before the run")
    p.set_defaults(positional_list="images")  # images may come before, between or after options
    p.add_argument("--score-thr", type=finite_number("--score-thr (a score in [0, 1])", 0.0, 1.0), default=0.0,
                   help="keep detections scoring at least this in predictions.json (default 0: all); a filter on "
                        "the model's output (its own threshold: --test-score-thr)")
    p.add_argument("--max-dets", type=whole_number(1, "detections"), default=None,
                   help="default: everything the model returns (a filter on its output; what the model itself "
                        "keeps: --test-max-dets)")
    _add_ray_args(p)
    p.add_argument("--draw", action=argparse.BooleanOptionalAction, default=True,
                   help="write DIR/pictures/<name>.png per input: boxes, class names, scores, masks, or the label "
                        "map with a legend, at the image's own size (default: on; --no-draw skips it)")
    p.add_argument("--draw-thr", type=finite_number("--draw-thr (a score in [0, 1])", 0.0, 1.0), default=0.3,
                   help="pictures show detections scoring at least this (default 0.3; when none does, the 5 best, "
                        "said so on the picture); predictions.json keeps --score-thr")
    p.set_defaults(func=cmd_predict)

    p = command(sub, "eval", help="evaluate on the model's dataset")
    _add_engine_args(p)
    p.add_argument("--data", required=True, help="dataset root (VOCdevkit for VOC models)")
    p.add_argument("--out", help="results folder (default runs/eval-MODEL-BACKEND-PRECISION)")
    p.add_argument("--batch", type=_batch_size, default=8, help="images per inference call (default 8)")
    p.add_argument("--protocol", default=None,
                   help="default: the one the model's published figure was measured with; VOC: voc-devkit, "
                        "refinedet-pytorch, detectron2 or mmdet (README 'VOC07 protocols'); COCO: standard")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--skip-bad", action="store_true", help="skip unusable images/annotations with a warning")
    p.add_argument("--workers", type=whole_number(0, "worker processes", MAX_WORKERS), default=1,
                   help="preprocessing processes (0 = in the main process)")
    p.add_argument("--limit", type=whole_number(1, "images"), help="only the first N images of the split")
    p.add_argument("--dumps", help="evaluate the vendor tool's output dumps (<image>_<k>.bin) in this directory")
    _add_ray_args(p)
    p.add_argument("--pictures", type=whole_number(0, "pictures"), default=3, metavar="N",
                   help="write OUT/pictures/: the first N images and the N that disagree most with the ground "
                        "truth, drawn (default 3; 0: none)")
    p.add_argument("--coco-evaluator", default="pycocotools", choices=["pycocotools", "faster-coco-eval"],
                   help="COCO AP by pycocotools (default, the reference) or faster-coco-eval (extra 'fastcoco')")
    p.set_defaults(func=cmd_eval)

    p = command(sub, "score", help="score a predictions file against a dataset (no model is built)")
    p.add_argument("--data", required=True, help="dataset root: COCO, VOCdevkit (VOC2007 test or VOC2012 seg val)")
    p.add_argument("--predictions", required=True,
                   help="predictions.json / detections.json (deployzoo's contract) or a COCO results json")
    p.add_argument("--dataset", choices=["coco", "voc07", "voc12seg"], help="default: recognised from the layout")
    p.add_argument("--protocol", default=None, help="the task's first protocol by default")
    p.add_argument("--coco-evaluator", default="pycocotools", choices=["pycocotools", "faster-coco-eval"],
                   help="COCO AP by pycocotools (default, the reference) or faster-coco-eval (extra 'fastcoco')")
    p.add_argument("--classes", help="a VOC-format set's own class names, comma-separated or a file with one per "
                                     "line (default: the 20 VOC classes; COCO files name their categories)")
    p.add_argument("--annotations", help="a COCO annotation file outside the val2017 layout (the set is then COCO)")
    p.add_argument("--out", help="where metrics.json goes (default: beside the predictions file, score/)")
    p.set_defaults(func=cmd_score)

    p = command(sub, "bench", help="pure-inference benchmark over batch sizes")
    p.add_argument("model", help="registry name or an exported .onnx")
    p.add_argument("--onnx", help="benchmark this exported .onnx as MODEL (for a file without deployzoo metadata)")
    p.add_argument("--checkpoint", help="official checkpoint file; without it, deterministic stand-in weights")
    p.add_argument("--backend", default="onnxruntime", choices=list(BACKENDS), help="engine to time (default onnxruntime)")
    p.add_argument("--batch", type=_batch_list, default=[1, 4, 8], help="comma-separated batch sizes (default 1,4,8)")
    p.add_argument("--warmup", type=whole_number(0, "warm-up calls"), default=None,
                   help="warm-up calls (default 3); with --e2e, passes (default 1)")
    p.add_argument("--iters", type=whole_number(1, "timed iterations"), default=10,
                   help="at least this many timed iterations")
    p.add_argument("--min-seconds", type=finite_number("--min-seconds", 0), default=5.0, help="and at least this long")
    p.add_argument("--threads", type=whole_number(0, "threads", MAX_THREADS), default=0,
                   help="intra-op threads (0 = backend default)")
    p.add_argument("--out", help="results folder for the JSON and CSV (default runs/bench)")
    p.add_argument("--data", help="dataset for the accuracy guard (fp16, bf16, auto)")
    p.add_argument("--device", default="cpu", help="device of the PyTorch backends: cpu or cuda[:N]")
    p.add_argument("--no-native", dest="native", action="store_false",
                   help="skip timing the backend's own run loop (ONNX Runtime, OpenVINO) for the overhead ratio")
    p.add_argument("--e2e", action="store_true",
                   help="end to end per image on real files (decode, preprocess, model, post-process), the engines of "
                        "--backends x --precisions interleaved, each against eager PyTorch fp32")
    p.add_argument("--backends", default="pytorch,onnxruntime,openvino", help="--e2e: comma-separated backends")
    p.add_argument("--precisions", default="fp32", help="--e2e: comma-separated precisions (fp32, fp16, bf16, int8; int8 calibrates on generated images, said so)")
    p.add_argument("--images", nargs="+", help="--e2e: image files (default: generated images of the model's dataset)")
    p.add_argument("--num-images", type=whole_number(1, "images", MAX_GENERATED_IMAGES), default=4, help="--e2e: generated images when no --images")
    p.add_argument("--repeats", type=whole_number(1, "timed passes"), default=3,
                   help="--e2e: interleaved timed passes per engine")
    _add_precision_args(p)
    p.set_defaults(func=cmd_bench)

    p = command(sub, "compare", help="engine against the PyTorch model on the same images")
    _add_engine_args(p)
    p.add_argument("--images", nargs="+", help="image files (default: the first --num-images of --data)")
    p.add_argument("--data", help="dataset root whose first --num-images images are compared")
    p.add_argument("--num-images", type=whole_number(1, "images", MAX_GENERATED_IMAGES), default=4, help="images compared when none are listed (default 4)")
    p.add_argument("--batch", type=_batch_size, default=1, help="the engine's batch size (default 1)")
    p.add_argument("--out", help="results folder for compare.json (default runs/compare-MODEL-BACKEND-PRECISION)")
    p.add_argument("--draw", choices=["differ", "all", "none"], default="differ",
                   help="pictures/<name>.png with the engine's and the reference's results side by side: for the "
                        "images where they differ (default), all images, or none")
    p.set_defaults(func=cmd_compare)

    p = command(sub, "data", help="dataset tools: vendor .bin layout, synthetic datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = command(data_sub, "to-bin", help="preprocessed images as raw float32 .bin + .info")
    q.add_argument("model", help="registry name: its preprocessing is applied")
    q.add_argument("images", nargs="*", help="image files (or --data)")
    q.add_argument("--data", help="dataset root: its split's images, named as `eval --dumps` expects")
    q.add_argument("--limit", type=whole_number(1, "images"), help="only the first N images of --data's split")
    q.add_argument("--workers", type=whole_number(0, "worker processes", MAX_WORKERS), default=0,
                   help="preprocessing processes (0 = in the main process)")
    q.add_argument("--out", required=True, help="folder for the .bin files, input.info and images.info")
    q.set_defaults(func=cmd_data, positional_list="images")  # images may come before, between or after options
    q = command(data_sub, "synthetic", help="write a small synthetic dataset in the official layout")
    q.add_argument("model", help="registry name: the dataset layout and classes are its dataset's")
    q.add_argument("--out", required=True, help="folder the dataset is written to")
    q.add_argument("--num-images", type=whole_number(1, "images", MAX_GENERATED_IMAGES), default=16, help="images to generate (default 16)")
    q.add_argument("--seed", type=whole_number(0, "--seed"), default=0, help="random seed: the same seed gives the same files")
    q.set_defaults(func=cmd_data)

    p = command(sub, "matrix", help="benchmark models x backends x precisions x batch sizes; resumable")
    p.add_argument("--models", default="all", help="comma-separated registry names, or 'all' (the whole zoo)")
    p.add_argument("--backends", default="onnxruntime,openvino,pytorch", help=f"comma-separated, of {', '.join(BACKENDS)}")
    p.add_argument("--precisions", default="fp32,fp16", help="comma-separated, of fp32, fp16, bf16, int8")
    p.add_argument("--batch", type=_batch_list, default=[1, 4], help="comma-separated batch sizes (default 1,4)")
    p.add_argument("--out", required=True, help="results folder; finished cells there are kept and reused")
    p.add_argument("--fresh", action="store_true", help="measure every cell again instead of resuming")
    p.add_argument("--ray", nargs="?", const="local", default=None, type=_ray_address, metavar="ADDRESS",
                   help="run the cells as Ray tasks, each alone on one node's CPUs (pip install 'deployzoo[ray]'): "
                        "'local' (no ADDRESS) on this machine; an address joins a cluster")
    p.add_argument("--checkpoint", help="official checkpoint (with a single model only)")
    p.add_argument("--data", help="dataset for the accuracy guard (default: a synthetic set per dataset)")
    p.add_argument("--guard-images", type=whole_number(1, "images", MAX_GENERATED_IMAGES), default=4,
                   help="images the accuracy guard evaluates (default 4)")
    p.add_argument("--guard-tolerance", type=finite_number("--guard-tolerance", 0, 100), default=0.5,
                   help="largest metric drop (points) below fp32")
    p.add_argument("--warmup", type=whole_number(0, "warm-up calls"), default=1,
                   help="untimed calls before timing each cell (default 1)")
    p.add_argument("--iters", type=whole_number(1, "timed iterations"), default=3,
                   help="at least this many timed iterations per cell")
    p.add_argument("--min-seconds", type=finite_number("--min-seconds", 0), default=2.0, help="and at least this long")
    p.add_argument("--threads", type=whole_number(0, "threads", MAX_THREADS), default=0,
                   help="intra-op threads (0 = backend default)")
    p.add_argument("--device", default="cpu", help="device of the PyTorch backends: cpu or cuda[:N]")
    p.add_argument("--overhead", action="store_true",
                   help="also time ONNX Runtime's / OpenVINO's own run loop in each cell and report the ratio")
    p.add_argument("--cell-timeout", type=finite_number("--cell-timeout", 1), metavar="SECONDS",
                   help="run each cell in a process of its own and kill it past this many seconds (status "
                        "'timed out'; the matrix goes on); default: no limit, cells run in this process")
    p.set_defaults(func=cmd_matrix)

    p = command(sub, "run", help="the main job: export, compare, evaluate, benchmark, report")
    p.add_argument("model", help="registry name (see `deployzoo models`)")
    p.add_argument("--checkpoint", help="official checkpoint file; without it, deterministic stand-in weights")
    p.add_argument("--data", help="dataset root; without it, a generated synthetic set (said so)")
    p.add_argument("--out", required=True, help="results folder: report.md, report.json, eval/, bench.*")
    p.add_argument("--batch", type=_batch_list, default=None, help="batch sizes to benchmark (default: the model's)")
    p.add_argument("--eval-batch", type=_batch_size, default=None, help="batch size of the evaluation (default: the model's)")
    p.add_argument("--num-images", type=whole_number(1, "images", MAX_GENERATED_IMAGES), default=None, help="synthetic images when no --data")
    p.add_argument("--protocol", default=None, help="the task's first protocol by default")
    p.add_argument("--min-seconds", type=finite_number("--min-seconds", 0), default=None,
                   help="minimum duration of each benchmark cell")
    p.add_argument("--threads", type=whole_number(0, "threads", MAX_THREADS), default=0,
                   help="intra-op threads (0 = backend default)")
    p.add_argument("--workers", type=whole_number(0, "worker processes", MAX_WORKERS), default=1,
                   help="preprocessing processes (0 = in the main process)")
    p.set_defaults(func=cmd_run)
    _add_fine_tune_args(sub.choices, data_sub.choices)
    return parser


def _add_fine_tune_args(commands: dict, data_commands: dict) -> None:
    """--classes on every command that builds a model; --annotations / --images DIR (--image-dir) on those
    that read a dataset: a fine-tuned checkpoint's class names and a COCO-format set outside val2017's layout."""
    for name, p in [*commands.items(), *data_commands.items()]:
        if name in ("models", "cache", "data", "score"):
            continue
        p.add_argument("--classes", help="class names, comma-separated or a file with one per line (a fine-tuned "
                                         "model; default: the checkpoint's own, the dataset's, else class_0..)")
        _add_test_setting_args(p, name)
        if name in ("export", "predict", "synthetic"):
            continue
        p.add_argument("--annotations", help="COCO-format annotation file when the layout is not "
                                             "<data>/annotations/instances_val2017.json")
        taken = any("--images" in a.option_strings for a in p._actions)
        p.add_argument(*(("--image-dir",) if taken else ("--images", "--image-dir")), dest="image_dir",
                       help="folder of the --annotations file's images (default <data>/val2017)")


def _add_test_setting_args(p: argparse.ArgumentParser, command: str) -> None:
    """Test-time settings a fine-tuned model may change (deployzoo.test_settings): they build the model (and the
    exported graph) with them; an exported file keeps its own (metadata)."""
    g = p.add_argument_group("test-time settings (default: the official ones; recorded in reports and the ONNX)")
    g.add_argument("--input-size", metavar="N", help="test scale: RefineDet's square side (320; multiples of 64, "
                                                     "e.g. 512), the R-CNN/FSAF short side (800), PSPNet's (512)")
    g.add_argument("--max-size", metavar="N", help="long-side limit of the keep-ratio resize (R-CNN/FSAF 1333, "
                                                   "PSPNet 2048)")
    g.add_argument("--test-score-thr", metavar="X", help="the model's own score threshold in [0, 1) (R-CNN/FSAF "
                                                         "0.05 in the graph, RefineDet 0.01)")
    g.add_argument("--test-max-dets", metavar="K", help="detections per image the model keeps (R-CNN/FSAF 100 in "
                                                        "the graph; RefineDet: all)"
                   + ("; predict's --score-thr/--max-dets then filter its output further" if command == "predict"
                      else ""))


def _test_settings(args: argparse.Namespace) -> dict:
    """The test-time settings given on the command line (unchecked: fine_tuned.spec_for checks them)."""
    given = {"input_size": getattr(args, "input_size", None), "max_size": getattr(args, "max_size", None),
             "score_threshold": getattr(args, "test_score_thr", None),
             "max_dets": getattr(args, "test_max_dets", None)}
    return {k: v for k, v in given.items() if v is not None}


def _fine_tune_kwargs(args: argparse.Namespace) -> dict:
    return {"classes": getattr(args, "classes", None), "annotations": getattr(args, "annotations", None),
            "image_dir": getattr(args, "image_dir", None), "test_settings": _test_settings(args)}


def _spec(args: argparse.Namespace, name: str | None = None, onnx: str | None = None):
    """The registry spec of ``name`` (default args.model) for this command's checkpoint (its class count and
    names), --classes, ONNX file and dataset (deployzoo.fine_tuned.spec_for)."""
    from deployzoo.fine_tuned import spec_for
    from deployzoo.registry import get_spec

    return spec_for(get_spec(name or args.model), getattr(args, "checkpoint", None), getattr(args, "classes", None),
                    onnx=onnx or getattr(args, "onnx", None), data=getattr(args, "data", None),
                    annotations=getattr(args, "annotations", None), images=getattr(args, "image_dir", None),
                    settings=_test_settings(args))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse ends a positional list at the first option; a command whose trailing positional is a list
    # (positional_list) takes the file names that follow options too, in the order given.
    listed = getattr(args, "positional_list", None)
    if extra and listed and not any(e.startswith("-") for e in extra):
        setattr(args, listed, [*getattr(args, listed), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from deployzoo.data.images import show_decode_warnings_plainly

    show_decode_warnings_plainly()
    if args.command == "bench":
        args.given = _given_options(sys.argv[1:] if argv is None else list(argv), "bench",
                                    [*_BENCH_E2E_ONLY, *_BENCH_PURE_ONLY])
    try:
        return args.func(args)
    except DeployzooError as exc:
        if args.verbose:
            if getattr(exc, "details", None):  # e.g. every key of a checkpoint that does not fit
                print(exc.details, file=sys.stderr)
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished batches are kept; rerun with --resume to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `deployzoo cache list | head`: the reader left; no traceback (Python docs, signal)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not fail again
        return 141


if __name__ == "__main__":
    sys.exit(main())
