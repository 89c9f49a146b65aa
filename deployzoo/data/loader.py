"""Read + preprocess images in worker processes, in order, with bounded read-ahead.

This module imports only numpy/OpenCV-level code so spawned workers start fast and small.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from deployzoo.data.images import read_image_bgr
from deployzoo.errors import BadInputError, ImageSizeError


@dataclass(frozen=True)
class ImageItem:
    image_id: str
    path: str
    listed_in: str = ""  # the split/list file that named this image, for error messages


@dataclass
class PreparedImage:
    image_id: str
    path: str
    array: np.ndarray  # float32 [3, H, W], the network input of this image
    meta: Any  # transforms.ImageMeta
    read_s: float
    preprocess_s: float


@dataclass
class BadImage:
    image_id: str
    path: str
    problem: str


def prepare(item: ImageItem, preprocess: Callable[[np.ndarray], tuple[np.ndarray, Any]]) -> PreparedImage | BadImage:
    """Read and preprocess one image; an unusable file becomes a BadImage (the caller decides)."""
    t0 = time.perf_counter()
    if item.listed_in and not Path(item.path).exists():
        return BadImage(item.image_id, item.path, f"image not found, but id {item.image_id!r} is listed in {item.listed_in}")
    # A preprocess may name its framework's own decoder (detectron2 decodes with PIL); cv2 otherwise.
    read = getattr(preprocess, "read_image", read_image_bgr)
    try:
        bgr = read(item.path)
    except BadInputError as exc:
        return BadImage(item.image_id, item.path, exc.problem)
    t1 = time.perf_counter()
    try:
        array, meta = preprocess(bgr)
    except ImageSizeError as exc:  # a size the model's resize cannot take (a side would be 0 pixels)
        return BadImage(item.image_id, item.path, exc.problem)
    return PreparedImage(item.image_id, item.path, array, meta, t1 - t0, time.perf_counter() - t1)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core is the parallelism; no nested thread pools
    from deployzoo.data.images import show_decode_warnings_plainly

    show_decode_warnings_plainly()  # "warning: <file>: ..." as in the main process


def _prepare_star(args: tuple[ImageItem, Callable]) -> PreparedImage | BadImage:
    return prepare(*args)


def prepared_images(
    items: Iterable[ImageItem],
    preprocess: Callable[[np.ndarray], tuple[np.ndarray, Any]],
    workers: int = 1,
    read_ahead: int = 16,
) -> Iterator[PreparedImage | BadImage]:
    """Yield prepared images in ``items`` order.

    ``workers`` = 0 prepares in this process; otherwise a spawned pool does, at most ``read_ahead``
    images ahead of the consumer so memory stays bounded however slow inference is.
    ``preprocess`` must be picklable (a module-level function or a functools.partial of one).
    """
    if workers <= 0:
        for item in items:
            yield prepare(item, preprocess)
        return
    context = mp.get_context("spawn")  # fork after onnxruntime/torch started threads is unsafe
    with context.Pool(workers, initializer=_init_worker) as pool:
        pending: deque = deque()
        iterator = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(pending) < max(1, read_ahead):
                try:
                    item = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                pending.append(pool.apply_async(_prepare_star, ((item, preprocess),)))
            if not pending:
                return
            yield pending.popleft().get()


def items_from_paths(paths: Iterable[str | Path]) -> list[ImageItem]:
    """Image items whose id is the input's unique output name (``data.inputs.output_names``: the file stem
    unless inputs share one), the id used in results, output files and dumps."""
    from deployzoo.data.inputs import output_names

    paths = [str(p) for p in paths]
    return [ImageItem(name, p) for name, p in zip(output_names(paths), paths)]
