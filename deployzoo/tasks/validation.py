"""Check a whole split before the expensive part (loading weights, exporting, inference).

Every task's ``validate`` comes here: the split is opened and all its annotations parsed (the task's
``load_ground_truth``), then every image to be run is looked at through its header only: it exists, is a
readable image, and has the size the ground truth says (the task's ``check_image``). A problem of one image
or annotation stops the run naming the file, or with ``skip_bad`` is recorded and the image left out; a split
with nothing left to run is an error either way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from deployzoo.data.checks import image_header_hw
from deployzoo.errors import BadInputError, DeployzooError


class _Dataset(Protocol):
    ids: list[str]
    split_file: Path

    def image_path(self, image_id: str) -> Path: ...


@dataclass
class CheckedSplit:
    """A split whose annotations and image headers were checked.

    Attributes:
        dataset: the opened dataset.
        annotations: the ground truth handle of every image to run, by id, in split order.
        sizes: (H, W) of every image to run, from its header (EXIF orientation applied, as decoded).
        skipped: {"image_id", "problem"} (and "path" where a file is to blame) of each image left out as bad
            input (only with ``skip_bad``).
        root: the dataset root as given.
    """

    dataset: Any
    annotations: dict[str, Any]
    sizes: dict[str, tuple[int, int]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    root: str = ""

    @property
    def ids(self) -> list[str]:
        return list(self.annotations)

    def sizes_by_path(self) -> dict[str, tuple[int, int]]:
        """``sizes`` keyed by each image's file path (for messages that name files)."""
        return {str(self.dataset.image_path(i)): hw for i, hw in self.sizes.items()}


def check_split(task: Any, root: str | Path, skip_bad: bool = False, limit: int | None = None) -> CheckedSplit:
    """Open ``root`` with ``task``, parse all its ground truth and check the image files of the first ``limit``
    images (all when None) with ``task.check_image(dataset, image_id, annotation, (H, W))``.

    Raises:
        BadInputError: a bad annotation or image (without ``skip_bad``), naming the file.
        DeployzooError: ``limit`` below 1, or no image left to run.
    """
    if limit is not None and limit < 1:
        raise DeployzooError(f"{limit} images asked for (--limit, --num-images): at least 1 is needed")
    dataset: _Dataset = task.open(root)
    if not dataset.ids:
        raise BadInputError(dataset.split_file, "the split lists no images")
    annotations, bad = task.load_ground_truth(dataset, skip_bad=skip_bad)
    skipped = [{"image_id": i, "problem": p} for i, p in bad]
    ids = [i for i in dataset.ids if i in annotations][:limit]
    kept: dict[str, Any] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for image_id in ids:
        path = dataset.image_path(image_id)
        try:
            if not path.exists():
                raise BadInputError(path, f"image not found, but id {image_id!r} is listed in {dataset.split_file}")
            hw = image_header_hw(path)
            task.check_image(dataset, image_id, annotations[image_id], hw)
        except BadInputError as exc:
            if not skip_bad:
                raise
            skipped.append({"image_id": image_id, "path": exc.path, "problem": exc.problem})
            continue
        kept[image_id] = annotations[image_id]
        sizes[image_id] = hw
    if not kept:
        first = f" (the first: {skipped[0]['problem']})" if skipped else ""
        raise DeployzooError(f"no image of {dataset.split_file} is left to run: all {len(skipped)} were skipped "
                             f"as bad input{first}")
    return CheckedSplit(dataset, kept, sizes, skipped, str(root))


def size_mismatch(what: str, given_hw: tuple[int, int], image_path: Path, image_hw: tuple[int, int]) -> str:
    """The message for ground truth whose image size is not the image file's."""
    return (f"{what} gives the image size {given_hw[1]}x{given_hw[0]} (width x height), but {image_path} is "
            f"{image_hw[1]}x{image_hw[0]}: the ground truth does not belong to this image")
