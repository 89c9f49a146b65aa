"""Pictures of results: boxes, class names, scores and translucent instance masks over the photo, label maps
blended over the photo with a legend, and two pictures side by side.

Drawn with Pillow (already a dependency: the detectron2 models decode and resize with it), so pictures cost no
new package. Every picture keeps the input's original size (W x H pixels) and its pixel grid: results are in
original-image pixels (deployzoo.structures), so they are drawn where they are, with no rescaling. Images are
decoded exactly as the pipeline decodes them (deployzoo.data.images.read_image_bgr, i.e. cv2.imread), so a
box lands on the pixels the model saw.
"""
from __future__ import annotations

import colorsys
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deployzoo.structures import Detections, LabelMap

DEFAULT_SCORE_THRESHOLD = 0.3  # the usual "show" threshold of detectron2's and mmdet's demo scripts
DEFAULT_MAX_SHOWN = 50
FALLBACK_SHOWN = 5  # when nothing reaches the threshold (e.g. stand-in weights), the best few are shown, said so
MASK_ALPHA = 0.45
LABEL_ALPHA = 0.5


def class_colour(index: int) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour for class ``index`` (golden-ratio steps around the hue circle)."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def read_photo(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB, decoded as the pipeline decodes (cv2.imread; BadInputError naming the file)."""
    from deployzoo.data.images import read_image_bgr

    return np.ascontiguousarray(read_image_bgr(path)[:, :, ::-1])


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _scale(width: int, height: int) -> tuple[int, int]:
    """Text size and line width for a picture of this size (readable on a 320 px and a 4000 px photo)."""
    short = min(width, height)
    return max(11, round(short / 38)), max(1, round(short / 300))


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int],
           font, bounds: tuple[int, int]) -> None:
    """``text`` on a filled tag of ``colour`` whose lower-left corner is at ``xy`` (moved inside the picture)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x = min(max(0.0, xy[0]), max(0.0, bounds[0] - w))
    y = xy[1] - h if xy[1] - h >= 0 else xy[1]
    y = min(y, max(0.0, bounds[1] - h))
    draw.rectangle([x, y, x + w, y + h], fill=colour)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    draw.text((x + 2 - left, y + 2 - top), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)


def _banner(image: Image.Image, lines: Sequence[str]) -> None:
    """Caption lines on a dark translucent strip across the top of ``image`` (in place)."""
    if not lines:
        return
    font = _font(max(10, _scale(*image.size)[0] - 2))
    draw = ImageDraw.Draw(image, "RGBA")
    y = 0
    for line in _fit(draw, lines, font, image.width - 8):
        left, top, right, bottom = draw.textbbox((0, 0), line, font=font)
        h = bottom - top + 6
        draw.rectangle([0, y, image.width, y + h], fill=(0, 0, 0, 170))
        draw.text((4 - left, y + 3 - top), line, fill=(255, 255, 255, 255), font=font)
        y += h


def _fit(draw: ImageDraw.ImageDraw, lines: Sequence[str], font, width: int) -> list[str]:
    """``lines`` word-wrapped to ``width`` pixels (a word longer than that stays whole)."""
    out = []
    for line in lines:
        current = ""
        for word in line.split(" "):
            candidate = f"{current} {word}" if current else word
            if current and draw.textlength(candidate, font=font) > width:
                out.append(current)
                current = word
            else:
                current = candidate
        out.append(current)
    return out


def chosen(detections: Detections, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
           max_shown: int = DEFAULT_MAX_SHOWN) -> tuple[Detections, str]:
    """The detections a picture shows and a caption saying which: those scoring >= ``score_threshold`` (at most
    ``max_shown``, best first), or, when none does, the ``FALLBACK_SHOWN`` best, which the caption says."""
    kept = detections.top(max_shown, score_threshold)
    if len(kept) or not len(detections):
        return kept, (f"{len(kept)} of {len(detections)} detections shown (score >= {score_threshold:g}"
                      f"{f', best {max_shown}' if len(kept) == max_shown else ''})")
    best = detections.top(FALLBACK_SHOWN)
    return best, (f"no detection scores >= {score_threshold:g}: the {len(best)} best of {len(detections)} shown "
                  f"(best score {float(detections.scores.max()):.3f})")


def draw_detections(photo: np.ndarray, detections: Detections, class_names: Sequence[str],
                    caption: Sequence[str] = (), ground_truth: np.ndarray | None = None) -> Image.Image:
    """The photo with ``detections`` drawn on it, at its own size.

    ``photo``: uint8 [H, W, 3] RGB. ``detections``: boxes [K, 4] x1, y1, x2, y2 in the photo's pixels, scores [K],
    labels [K] (0-based into ``class_names``), masks (COCO RLE at [H, W]) drawn as translucent fills of the class
    colour with a solid outline. Each box gets a tag "class score". ``ground_truth``: optional [N, 4] boxes drawn
    as thin white outlines under the detections. ``caption``: lines on a strip across the top.
    Raises ValueError when a mask's size is not the photo's.
    """
    height, width = photo.shape[:2]
    text_size, line = _scale(width, height)
    font = _font(text_size)
    canvas = photo.astype(np.float32)
    order = np.argsort(detections.scores, kind="stable")  # the best drawn last, on top
    if detections.masks is not None:
        from pycocotools import mask as mask_utils

        for k in order:
            rle = detections.masks[int(k)]
            if list(rle["size"]) != [height, width]:
                raise ValueError(f"mask {k} is {rle['size'][0]}x{rle['size'][1]}, the photo {height}x{width}")
            m = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()
                                   if isinstance(rle["counts"], str) else rle["counts"]}).astype(bool)
            colour = np.array(class_colour(int(detections.labels[k])), np.float32)
            canvas[m] = canvas[m] * (1 - MASK_ALPHA) + colour * MASK_ALPHA
    image = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    if ground_truth is not None:
        for x1, y1, x2, y2 in np.asarray(ground_truth, np.float64).tolist():
            draw.rectangle([x1, y1, x2, y2], outline=(255, 255, 255), width=max(1, line // 2))
    for k in order:
        x1, y1, x2, y2 = detections.boxes[int(k)].tolist()
        label = int(detections.labels[k])
        colour = class_colour(label)
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=line)
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        _label(draw, (x1, y1), f"{name} {float(detections.scores[k]):.2f}", colour, font, (width, height))
    _banner(image, caption)
    return image


def draw_label_map(photo: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                   palette: np.ndarray | None = None, caption: Sequence[str] = (),
                   ignore_index: int = 255) -> Image.Image:
    """The photo with the label map blended over it (``LABEL_ALPHA``) and a legend of the classes present.

    ``photo``: uint8 [H, W, 3] RGB; ``labels``: uint8 [H, W] class indices (``ignore_index`` left unblended).
    ``palette``: [>=num_classes, 3] RGB per class (default: the VOC palette for VOC-sized class lists, else
    ``class_colour``). The legend sits in the lower-left corner, inside the picture, which keeps its size.
    Raises ValueError when the two sizes differ.
    """
    height, width = photo.shape[:2]
    if labels.shape != (height, width):
        raise ValueError(f"label map is {labels.shape[0]}x{labels.shape[1]}, the photo {height}x{width}")
    colours = _palette(len(class_names)) if palette is None else np.asarray(palette, np.float32)[:, :3]
    canvas = photo.astype(np.float32)
    valid = labels != ignore_index
    index = np.where(valid, labels, 0).astype(np.int64)
    blended = canvas * (1 - LABEL_ALPHA) + colours[np.minimum(index, len(colours) - 1)] * LABEL_ALPHA
    canvas = np.where(valid[..., None], blended, canvas)
    image = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
    values, counts = np.unique(labels[valid], return_counts=True)
    present = [(int(v), int(c)) for v, c in sorted(zip(values, counts), key=lambda vc: -vc[1])]
    _legend(image, [(class_names[v] if v < len(class_names) else str(v), tuple(int(c) for c in colours[v]),
                     100.0 * n / max(1, int(valid.sum()))) for v, n in present])
    _banner(image, caption)
    return image


def _palette(num_classes: int) -> np.ndarray:
    if num_classes <= 256:
        try:
            from deployzoo.data.voc_seg import voc_palette

            return np.asarray(voc_palette(), np.float32).reshape(-1, 3)[:max(num_classes, 1)]
        except ImportError:  # pragma: no cover - the VOC reader is part of the package
            pass
    return np.array([class_colour(i) for i in range(num_classes)], np.float32)


def _legend(image: Image.Image, rows: Sequence[tuple[str, tuple[int, int, int], float]], most: int = 12) -> None:
    """Colour swatches with class names and pixel shares, lower-left, on a translucent panel (in place)."""
    if not rows:
        return
    shown = list(rows[:most])
    texts = [f"{name} {share:.1f}%" if share >= 0.05 else f"{name} <0.1%" for name, _, share in shown]
    if len(rows) > most:
        texts.append(f"+{len(rows) - most} more classes")
    font = _font(max(10, _scale(*image.size)[0] - 2))
    draw = ImageDraw.Draw(image, "RGBA")
    boxes = [draw.textbbox((0, 0), t, font=font) for t in texts]
    row_h = max(b[3] - b[1] for b in boxes) + 6
    swatch = row_h - 4
    panel_w = min(image.width, max(b[2] - b[0] for b in boxes) + swatch + 14)
    panel_h = min(image.height, row_h * len(texts) + 6)
    top = image.height - panel_h
    draw.rectangle([0, top, panel_w, image.height], fill=(0, 0, 0, 170))
    for i, text in enumerate(texts):
        y = top + 3 + i * row_h
        if i < len(shown):
            draw.rectangle([4, y + 2, 4 + swatch, y + 2 + swatch], fill=(*shown[i][1], 255),
                           outline=(255, 255, 255, 255))
        draw.text((swatch + 10 - boxes[i][0], y + 3 - boxes[i][1]), text, fill=(255, 255, 255, 255), font=font)


def side_by_side(left: Image.Image, right: Image.Image, titles: tuple[str, str] = ("", "")) -> Image.Image:
    """Two pictures of one photo next to each other (same height), each titled on its top strip."""
    for image, title in zip((left, right), titles):
        if title:
            _banner(image, [title])
    gap = max(4, left.width // 100)
    out = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as an optimised PNG (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path


def draw_result(photo: np.ndarray, result: Detections | LabelMap, spec: Any, caption: Sequence[str] = (),
                score_threshold: float = DEFAULT_SCORE_THRESHOLD, ground_truth: np.ndarray | None = None
                ) -> Image.Image:
    """The picture of one model result (``spec``: a ModelSpec, for class names and task); detections are
    thinned by ``chosen`` and the caption says how."""
    if isinstance(result, LabelMap):
        return draw_label_map(photo, result.labels, spec.class_names, caption=caption)
    shown, note = chosen(result, score_threshold)
    return draw_detections(photo, shown, spec.class_names, caption=[*caption, note], ground_truth=ground_truth)


def detections_from_records(records: Sequence[dict], class_names: Sequence[str]) -> Detections:
    """Detections of one image back from its predictions.json records (bbox [x, y, w, h] -> x1, y1, x2, y2)."""
    index = {name: i for i, name in enumerate(class_names)}
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)], np.float32).reshape(-1, 4)
    scores = np.array([r["score"] for r in records], np.float32)
    labels = np.array([index.get(r["category"], -1) for r in records], np.int64)
    masks = [r["segmentation"] for r in records] if records and "segmentation" in records[0] else None
    return Detections(boxes, scores, labels, masks)
