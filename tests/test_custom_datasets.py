"""Your own data (issue 17): a COCO-format set with 3 categories of non-contiguous ids outside val2017's layout
(--annotations FILE --images DIR) and a VOC-format set with its own class list (--classes), each scored by
`deployzoo eval` and checked against an independent scoring of the same files: pycocotools for COCO, and the
RefineDet.PyTorch VOC07 rules written out here for VOC. The ground truth is the fine-tuned model's own confident
detections (written in the dataset's ids / names), so a wrong category mapping shows as a low AP."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from fine_tuned_helpers import MMDET_MASK_RCNN, REFINEDET, fine_tuned_weights, write_checkpoint


def _images(folder: Path, sizes, seed: int = 0) -> list[Path]:
    import cv2

    from deployzoo.data.images import write_jpeg

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k, (h, w) in enumerate(sizes):
        image = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (0, 0), 3)
        for _ in range(4):  # some solid shapes for the stand-in weights to react to
            x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            cv2.rectangle(image, (x, y), (x + int(rng.integers(30, 60)), y + int(rng.integers(30, 60))),
                          tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
        paths.append(write_jpeg(folder / f"img{k:03d}.jpg", image))
    return paths


def _predict(model: str, checkpoint: Path, names: str, paths: list[Path], out: Path) -> list[dict]:
    from deployzoo.cli import main

    assert main(["predict", model, *map(str, paths), "--backend", "pytorch", "--checkpoint", str(checkpoint),
                 "--classes", names, "--out", str(out)]) == 0
    return json.loads((out / "predictions.json").read_text())


def _top(records: list[dict], path: Path, count: int, min_score: float) -> list[dict]:
    own = [r for r in records if Path(r["path"]).name == path.name and r["score"] >= min_score]
    return sorted(own, key=lambda r: -r["score"])[:count]


@pytest.mark.slow
def test_custom_coco_layout_with_non_contiguous_ids_scores_as_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from deployzoo.cli import main

    checkpoint = write_checkpoint(MMDET_MASK_RCNN, fine_tuned_weights(MMDET_MASK_RCNN, 3), tmp_path / "ft.pth")
    categories = [{"id": 42, "name": "zebra_crossing"}, {"id": 3, "name": "bollard"}, {"id": 17, "name": "cone"}]
    ids = {c["name"]: c["id"] for c in categories}
    paths = _images(tmp_path / "pics", [(240, 320), (300, 220)])
    records = _predict(MMDET_MASK_RCNN, checkpoint, "bollard,cone,zebra_crossing", paths, tmp_path / "predict")
    images, annotations = [], []
    for k, path in enumerate(paths):
        image_id = 1000 + 7 * k
        h, w = (240, 320) if k == 0 else (300, 220)
        images.append({"id": image_id, "file_name": path.name, "height": h, "width": w})
        own = [r for r in records if Path(r["path"]).name == path.name and min(r["bbox"][2:]) > 2]
        for r in [r for name in ids for r in sorted((r for r in own if r["category"] == name),
                                                   key=lambda r: -r["score"])[:2]]:
            x, y, bw, bh = r["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[r["category"]],
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
                                "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
    # The stand-in weights favour one class; its id is not its label + 1 (the label-to-id table is checked below).
    assert annotations and {a["category_id"] for a in annotations} <= {3, 17, 42}
    ann = tmp_path / "labels" / "my_set.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))

    out = tmp_path / "eval"
    assert main(["eval", MMDET_MASK_RCNN, "--checkpoint", str(checkpoint), "--data", str(tmp_path),
                 "--annotations", str(ann), "--images", str(tmp_path / "pics"), "--backend", "pytorch", "--batch", "1", "--workers", "0",
                 "--out", str(out)]) == 0
    headline = json.loads((out / "metrics.json").read_text())["headline"]["value"]
    detections = json.loads((out / "detections.json").read_text())
    assert detections and all(d["category_id"] == ids[d["category"]] for d in detections)
    by_name = {i["file_name"]: i["id"] for i in images}
    results = [{"image_id": d.get("image_id", by_name.get(d["file_name"])), "category_id": d["category_id"],
                "bbox": d["bbox"], "score": d["score"]} for d in detections]
    gt = COCO(str(ann))
    evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert headline == pytest.approx(100 * evaluator.stats[0], abs=1e-6)
    assert headline > 50  # the model's own detections: a category mix-up would score near 0


def _voc07_refinedet_pytorch(detections: list[dict], annotations: dict[str, list], names: list[str]) -> float:
    """VOC07 11-point mAP by RefineDet.PyTorch's eval rules: scores '%.3f', boxes '%.1f' of x + 1 against the
    XML - 1, IoU without +1, a match needs IoU > 0.5, difficult objects neither TP nor FP, np.argsort order."""
    aps = []
    for c, name in enumerate(names):
        gt = {image: [(np.array(box, float) - 1, diff) for n, box, diff in objs if n == name]
              for image, objs in annotations.items()}
        npos = sum(not d for objs in gt.values() for _, d in objs)
        used = {image: [False] * len(objs) for image, objs in gt.items()}
        dets = [d for d in detections if d["category"] == name and d["score"] > 0]
        conf = np.array([float(f"{d['score']:.3f}") for d in dets])
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for rank, k in enumerate(np.argsort(-conf)):
            d = dets[k]
            x, y, w, h = d["bbox"]
            bb = np.array([float(f"{v + 1:.1f}") for v in (x, y, x + w, y + h)])
            best, where = 0.0, -1
            for j, (g, _) in enumerate(gt[d["image"]]):
                iw = max(min(g[2], bb[2]) - max(g[0], bb[0]), 0.0)
                ih = max(min(g[3], bb[3]) - max(g[1], bb[1]), 0.0)
                inter = iw * ih
                iou = inter / ((bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter)
                if iou > best:
                    best, where = iou, j
            if best > 0.5:
                if gt[d["image"]][where][1]:
                    continue
                if not used[d["image"]][where]:
                    tp[rank] = used[d["image"]][where] = 1
                else:
                    fp[rank] = 1
            else:
                fp[rank] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        with np.errstate(invalid="ignore", divide="ignore"):
            rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(sum((prec[rec >= t].max() if (rec >= t).any() else 0.0) / 11 for t in np.arange(0.0, 1.1, 0.1)))
    return 100.0 * float(np.mean(aps))


@pytest.mark.slow
def test_voc_format_set_with_its_own_class_list(tmp_path):
    from deployzoo.cli import main

    names = ["boat", "car", "bus"]  # not alphabetical: label k is names[k]
    checkpoint = write_checkpoint(REFINEDET, fine_tuned_weights(REFINEDET, 3), tmp_path / "ft.pth")
    year = tmp_path / "VOCdevkit" / "VOC2007"
    sizes = [(240, 320), (300, 220), (256, 256)]
    paths = _images(year / "JPEGImages", sizes, seed=1)
    records = _predict(REFINEDET, checkpoint, ",".join(names), paths, tmp_path / "predict")
    (year / "Annotations").mkdir()
    (year / "ImageSets" / "Main").mkdir(parents=True)
    annotations = {}
    for k, (path, (h, w)) in enumerate(zip(paths, sizes)):
        root = ET.Element("annotation")
        size = ET.SubElement(root, "size")
        for tag, value in (("width", w), ("height", h), ("depth", 3)):
            ET.SubElement(size, tag).text = str(value)
        objs = []
        for j, r in enumerate(_top(records, path, 5, 0.0)):
            x, y, bw, bh = r["bbox"]
            box = [int(np.clip(round(v), 0, lim - 1)) + 1 for v, lim in ((x, w), (y, h), (x + bw, w), (y + bh, h))]
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = r["category"]
            ET.SubElement(obj, "difficult").text = str(int(j == 4))
            bnd = ET.SubElement(obj, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
                ET.SubElement(bnd, tag).text = str(value)
            objs.append((r["category"], box, j == 4))
        ET.ElementTree(root).write(year / "Annotations" / f"{path.stem}.xml")
        annotations[path.stem] = objs
    (year / "ImageSets" / "Main" / "test.txt").write_text("\n".join(p.stem for p in paths) + "\n")
    assert len({n for objs in annotations.values() for n, _, _ in objs}) >= 2

    out = tmp_path / "eval"
    assert main(["eval", REFINEDET, "--checkpoint", str(checkpoint), "--data", str(tmp_path / "VOCdevkit"),
                 "--classes", ",".join(names), "--protocol", "refinedet-pytorch", "--backend", "pytorch",
                 "--batch", "1", "--workers", "0", "--out", str(out)]) == 0
    headline = json.loads((out / "metrics.json").read_text())["headline"]["value"]
    detections = json.loads((out / "detections.json").read_text())
    for d in detections:
        d["image"] = str(d.get("image_id") or Path(d.get("path") or d["file_name"]).stem)
        assert d["category_id"] == names.index(d["category"]) + 1
    assert headline == pytest.approx(_voc07_refinedet_pytorch(detections, annotations, names), abs=1e-6)
    assert headline > 50
