"""``report.md`` of ``deployzoo run``: written for someone who has never used deployzoo.

It says first what the figures are worth (stand-in weights, synthetic images), shows pictures and the benchmark
plot (relative paths, so the report renders in a repository browser), keeps the measured figure and the
published one apart, explains the protocol and the end-to-end / pure ratio, lists the files written and ends
with the next steps. The numbers come from ``report`` (the dict also written as report.json).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

# What each headline metric is, in plain words (the protocol's exact reference is added from the task).
METRIC_MEANING = {
    "VOC07 11-point mAP": (
        "for each of the 20 classes, detections are ranked by score and matched to ground-truth boxes of that "
        "class at IoU 0.5 (each box matched once; boxes marked 'difficult' neither count nor penalise); "
        "precision is read at the 11 recall levels 0, 0.1, ..., 1 and averaged; mAP is the mean over classes, "
        "in percent"),
    "COCO box AP": (
        "COCO's AP: precision averaged over 101 recall levels and 10 IoU thresholds (0.50, 0.55, ..., 0.95), "
        "at most 100 detections per image, then over the 80 classes, in percent (pycocotools COCOeval)"),
    "mIoU": (
        "for each class, the pixels where prediction and ground truth are both that class over the pixels where "
        "either is (summed over all images; pixels labelled 255 are ignored); mIoU is the mean over the classes, "
        "in percent"),
}


def _voc07_rules(acc: dict[str, Any]) -> str | None:
    """The VOC07 protocol's own matching rules (IoU >= or > 0.5, +1 pixel areas, ties, mean), which differ
    between protocols and so cannot be in METRIC_MEANING; None for other metrics."""
    if acc.get("metric") != "VOC07 11-point mAP":
        return None
    from deployzoo.eval.voc07 import PROTOCOLS  # local: only VOC reports need it

    protocol = PROTOCOLS.get(acc.get("protocol"))
    return protocol.rules if protocol else None


def protocol_reference(task: Any, protocol: str) -> str | None:
    """What the task says ``protocol``'s figures equal (framework and file), or None where it does not say."""
    describe = getattr(task, "protocol_equals", None)
    try:
        return describe(protocol) if describe else None
    except (KeyError, ValueError):
        return None


def plot_benchmark(bench: Sequence[Any], path: str | Path, title: str) -> Path | None:
    """Throughput (images/s) and median latency (ms per call) against batch size, as a PNG; None when no cell
    finished or matplotlib is missing."""
    ok = [r for r in bench if r.ok]
    if not ok:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    batches = [r.batch_size for r in ok]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=90)
    left.plot(batches, [r.stats.throughput for r in ok], marker="o")
    left.set_xlabel("batch size")
    left.set_ylabel("images / s")
    left.set_ylim(bottom=0)
    left.set_title("throughput")
    right.errorbar(batches, [r.stats.p50_ms for r in ok],
                   yerr=[[r.stats.p50_ms - r.stats.min_ms for r in ok], [r.stats.p90_ms - r.stats.p50_ms for r in ok]],
                   marker="o", capsize=3)
    right.set_xlabel("batch size")
    right.set_ylabel("ms per call (median; bars: min..p90)")
    right.set_title("latency of one call")
    right.set_ylim(bottom=0)
    for ax in (left, right):
        ax.set_xticks(batches)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _rel(path: str | Path, out: Path) -> str:
    try:
        return Path(path).resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return str(path)


def run_markdown(spec: Any, report: dict[str, Any], agreement_table: str, metrics_table: str, bench_table: str,
                 stages_table: str, out: Path, pictures: Sequence[dict[str, Any]] = (), plot: Path | None = None,
                 protocol_reference: str | None = None, checkpoint: str | None = None) -> str:
    """The Markdown text of report.md (see the module docstring). ``pictures``: deployzoo.pictures.eval_pictures
    rows, their files relative to ``out/eval``; ``plot``: the benchmark PNG."""
    env = report["environment"]
    acc = report["accuracy"]
    stand_in, synthetic = report["stand_in_weights"], report["synthetic_data"]
    eval_batch = report["stages"].get("batch_size")
    lines = [f"# deployzoo report: {spec.name}", ""]
    if stand_in or synthetic:
        lines += ["> **Read this first.**"]
        if stand_in:
            lines += ["> - No checkpoint was given, so the model ran with **stand-in weights** (deterministic "
                      "pseudo-random values). Every detection, picture and accuracy figure below shows what the "
                      "pipeline does, **not what the trained model does**."]
        if synthetic:
            lines += [f"> - No dataset was given, so the images are **{report.get('num_images', 'a few')} "
                      f"generated synthetic images** in the {spec.evaluation.dataset_name} layout, not real photos."]
        lines += ["> - See [Next steps](#next-steps) to run with the real checkpoint and dataset.", ""]
    for note in report["notes"]:
        if not note.startswith("NOTE:"):
            lines += [f"> {note}", ""]
    lines += [
        f"Model: **{spec.name}** ({spec.task}, {spec.dataset}); weights: {report['weights']}. "
        f"Machine: {env.get('cpu_model')}, {env.get('logical_cores')} logical cores; python {env.get('python')}; "
        f"{env.get('date')}.",
        "",
        "## What this run did",
        "",
        "1. Exported the model to ONNX with a dynamic batch size (kept in the engine cache, reused next time).",
        f"2. Ran ONNX Runtime and the PyTorch model on the same {report['agreement'].get('images', 'few')} images "
        "and compared their outputs.",
        f"3. Evaluated the ONNX Runtime engine on {'the synthetic images' if synthetic else report['data']} "
        f"(batch {eval_batch}).",
        f"4. Timed pure inference at batch sizes {', '.join(str(r['batch_size']) for r in report['pure_inference'])}.",
        "5. Wrote this report and the files listed at the end.",
        "",
    ]
    lines += pictures_section(spec, pictures, "eval/", stand_in)
    lines += accuracy_section(spec, acc, report.get("images_evaluated"),
                              "synthetic images" if synthetic else "images of " + str(report["data"]),
                              stand_in, synthetic, metrics_table, protocol_reference)
    lines += ["## Engine against PyTorch", "",
              "ONNX Runtime and the PyTorch model on the same preprocessed images; this checks the export, whatever "
              "the weights.", "", agreement_table, ""]
    lines += ["## Speed", "", "### Pure inference (ONNX Runtime, fp32)", "",
              "Time of one engine call on inputs already in memory (no file reading, preprocessing or "
              "post-processing).", ""]
    if plot is not None:
        lines += [f"![throughput and latency against batch size]({_rel(plot, out)})", ""]
    lines += [bench_table, "", f"### Whole pipeline on the evaluation images (ONNX Runtime, batch {eval_batch})", "",
              "Seconds spent in each stage while evaluating"
              + (" the synthetic images" if synthetic else "") + ": files read and preprocessed in worker processes, "
              "the engine, post-processing.", "", stages_table, ""]
    ratio = report["end_to_end_over_pure"]
    if ratio.get("ratio") is not None:
        lines += [f"**End-to-end / pure-inference throughput: {ratio['ratio']:.2f}** "
                  f"({ratio['end_to_end_images_per_s']:.2f} images/s for the whole pipeline at batch {eval_batch}, "
                  f"{ratio['pure_images_per_s']:.2f} images/s pure inference at batch {ratio['pure_batch']}). "
                  "What it means: the share of the engine's own speed that survives in real use. 1.0: reading, "
                  "preprocessing and post-processing are fully hidden behind inference; 0.5: the pipeline runs at "
                  "half the engine's speed, so the host work (or too few worker processes) is the bottleneck, not "
                  f"the model. Basis: {ratio.get('end_to_end_basis', 'the whole run, worker start-up not counted')}"
                  + (f"; pure inference timed on {ratio['pure_inputs']}" if ratio.get("pure_inputs") else "")
                  + (f"; the ratio is the {ratio['ratio_basis']}: "
                     + ", ".join(f"{r['ratio']:.2f}" for r in ratio["rounds"]) if ratio.get("rounds") else "")
                  + (f"; the whole run's wall-clock rate was {ratio['wall_images_per_s']:.2f} images/s"
                     if ratio.get("wall_images_per_s") else "") + ".", ""]
    if ratio.get("ratio") is None and ratio.get("reason"):
        lines += [f"End-to-end / pure-inference throughput: not measured: {ratio['reason']}.", ""]
    lines += ["## Files written", ""]
    lines += [f"- `{name}`: {what}" for name, what in _files(report, out, plot, pictures)]
    lines += ["", "## Next steps", ""]
    step = 1
    if stand_in or synthetic:
        ckpt = "--checkpoint " + (checkpoint or "CHECKPOINT.pth") if stand_in else (f"--checkpoint {checkpoint}"
                                                                                    if checkpoint else "")
        data = "--data " + ("DATASET_ROOT" if synthetic else str(report["data"]))
        lines += [f"{step}. Run again with the official checkpoint ({spec.checkpoint_format}) and the real "
                  f"{spec.evaluation.dataset_name} data:", "",
                  "   `" + " ".join(w for w in ("deployzoo run", spec.name, ckpt, data, f"--out runs/{spec.name}") if w)
                  + "`", ""]
        step += 1
    lines += [f"{step}. Look at detections on your own photos: `deployzoo predict {spec.name} "
              f"{'--checkpoint CHECKPOINT.pth ' if stand_in else ''}photo.jpg --out predictions` "
              "(writes predictions.json and pictures/).",
              f"{step + 1}. Other engines and precisions: `deployzoo matrix --models {spec.name} "
              "--backends onnxruntime,openvino,pytorch --precisions fp32,fp16,bf16 --out matrix`.",
              f"{step + 2}. What this machine offers (backends, CPU features, cache): `deployzoo doctor`.", ""]
    return "\n".join(lines)


def pictures_section(spec: Any, pictures: Sequence[dict[str, Any]], prefix: str, stand_in: bool) -> list[str]:
    """"## Pictures": each eval picture embedded (``prefix``: the path from the report to the eval folder)."""
    if not pictures:
        return []
    lines = ["## Pictures", ""]
    lines += ["Detections scoring at least 0.3 are drawn (with none that high, the 5 best, as the caption says); "
              "thin white outlines are the ground truth." if spec.task != "semantic-segmentation" else
              "The predicted label map is blended over each photo; the legend gives each class's share of the "
              "pixels."]
    if stand_in:
        what = "classes" if spec.task == "semantic-segmentation" else "boxes and labels"
        lines += ["", f"With stand-in weights the {what} are meaningless: the pictures show that the pipeline "
                      "draws, not what the model sees."]
    lines.append("")
    for p in pictures:
        amount = f"{p['disagreement']:.1f}%" if "pixels" in p["unit"] else f"{p['disagreement']:.0f}"
        lines += [f"**{p['why']}**: image {p['image_id']}, disagreement with ground truth {amount} "
                  f"({p['unit']})", "",
                  f"![{p['why']}: image {p['image_id']}]({prefix}{p['file']})", ""]
    return lines


def accuracy_section(spec: Any, acc: dict[str, Any], count: int | None, images: str, stand_in: bool,
                     synthetic: bool, metrics_table: str, protocol_reference: str | None) -> list[str]:
    """"## Accuracy": the measured figure with what it is worth, the metric and protocol explained, the
    per-class table (and why stand-in rows look odd), then the published figure under its own heading.
    ``acc``: {"metric", "protocol", "value", "published", "published_source"}."""
    from deployzoo.figures import headline_text

    measured = headline_text(acc["value"], acc["metric"])
    lines = ["## Accuracy", "", f"**Measured in this run: {acc['metric']} = {measured}** on "
             f"{str(count) + ' ' if count is not None else ''}{images}.", ""]
    if stand_in or synthetic:
        why = " and ".join(w for w, on in (("stand-in weights", stand_in), ("synthetic images", synthetic)) if on)
        lines += [f"This figure comes from {why}: it checks that evaluation runs end to end and **says nothing "
                  "about the trained model's accuracy**. It is not comparable with the published figure below.", ""]
    meaning = METRIC_MEANING.get(acc["metric"])
    lines += [f"How it is computed (protocol '{acc['protocol']}'): {meaning or acc['metric']}."
              + (f" The figures equal {protocol_reference}." if protocol_reference else "")
              + (f" This protocol's exact rules: {rules}." if (rules := _voc07_rules(acc)) else ""), ""]
    lines += ["Per class:", "", metrics_table, ""]
    if stand_in and spec.task != "semantic-segmentation":
        lines += ["Why the per-class rows look odd: stand-in weights give every anchor a similar, meaningless "
                  "score, so the model keeps its maximum number of detections on every image, thousands per class "
                  "over the set. Almost all of those boxes are wrong (precision near 0), and whether a class's objects "
                  "are found at all (its recall) depends on where its meaningless boxes happen to fall: some "
                  "classes find many, others none. So AP stays low. Trained weights do not do this.", ""]
    elif stand_in:
        lines += ["Why the per-class rows look odd: with stand-in weights the predicted classes are arbitrary, so "
                  "most classes have an IoU near 0. Trained weights do not do this.", ""]
    lines += ["### Published figure (for the trained model)", "",
              f"{acc['metric']} {acc['published']} ({acc['published_source']}). Reproduce it with the official "
              "checkpoint and the real dataset." if acc["published"] is not None
              else f"Not applicable: {acc['published_source']}.", ""]
    return lines


def eval_markdown(spec: Any, summary: dict[str, Any], metrics_table: str, stages_table: str, out: Path,
                  pictures: Sequence[dict[str, Any]] = (), stand_in: bool = False,
                  protocol_reference: str | None = None, engine: str = "") -> str:
    """report.md of ``deployzoo eval`` (``summary``: what metrics.json holds): the same accuracy and picture
    sections as run's report, the stage timings, the files written."""
    headline = summary["headline"]
    acc = {"metric": headline["metric"], "protocol": summary["protocol"], "value": headline["value"] or 0.0,
           "published": spec.published.value, "published_source": spec.published.source}
    lines = [f"# deployzoo eval: {spec.name}", ""]
    if stand_in:
        lines += ["> **Read this first.** No checkpoint was given, so the model ran with **stand-in weights** "
                  "(deterministic pseudo-random values): the pictures and figures show what the pipeline does, "
                  "**not what the trained model does**. Give `--checkpoint` with the official file.", ""]
    lines += [f"Model **{spec.name}** on {summary['data_root']} ({summary['dataset']}); engine: {engine}.", ""]
    lines += pictures_section(spec, pictures, "", stand_in)
    lines += accuracy_section(spec, acc, summary.get("images_evaluated"), f"images of {summary['data_root']}",
                              stand_in, False, metrics_table, protocol_reference)
    lines += ["## Where the time went", "", "Seconds per stage: files read and preprocessed in worker processes, "
              "the engine, post-processing.", "", stages_table, "", "## Files written", ""]
    rows = [("report.md", "this report"), ("metrics.json", "every figure above, machine-readable")]
    for name, what in (("detections.json", "every detection (predictions contract)"),
                       ("predictions.json", "one record per image (label maps)"),
                       ("label_maps/", "predicted label maps (palette PNG)"),
                       ("coco_results.bbox.json", "detections in COCO's results format"),
                       ("coco_results.segm.json", "masks in COCO's results format")):
        if (out / name).exists():
            rows.append((name, what))
    if pictures:
        rows.append(("pictures/", f"{len(pictures)} pictures shown above"))
    lines += [f"- `{name}`: {what}" for name, what in rows] + [""]
    return "\n".join(lines)


def _files(report: dict[str, Any], out: Path, plot: Path | None, pictures: Sequence[dict]) -> list[tuple[str, str]]:
    rows = [("report.md", "this report"), ("report.json", "every figure of this report, machine-readable"),
            ("bench.csv", "pure-inference timings per batch size")]
    if plot is not None:
        rows.append((_rel(plot, out), "the benchmark plot"))
    if (out / "eval" / "metrics.json").is_file():
        rows.append(("eval/metrics.json", "accuracy, per-class figures, stage timings"))
    for name, what in (("eval/detections.json", "every detection (predictions contract)"),
                       ("eval/predictions.json", "one record per image (label maps)"),
                       ("eval/label_maps/", "predicted label maps (palette PNG)"),
                       ("eval/coco_results.json", "detections in COCO's results format")):
        if (out / name).exists():
            rows.append((name, what))
    if pictures:
        rows.append(("eval/pictures/", f"{len(pictures)} pictures shown above"))
    if report.get("synthetic_data") and (out / "synthetic-data").is_dir():
        rows.append(("synthetic-data/", "the generated images and their annotations"))
    rows.append((report["export"]["path"], "the ONNX graph, in the engine cache (`deployzoo cache list`), not "
                                           "in this folder"))
    return rows
