"""Errors a user can act on: each names the file (or input) and the problem."""
from __future__ import annotations

from pathlib import Path


class DeployzooError(Exception):
    """Base class for every error deployzoo raises on purpose."""


class BadInputError(DeployzooError):
    """A user-supplied file (image, annotation, model file, dump) is unusable.

    ``path`` is kept so callers running with ``--skip-bad`` can report what was skipped.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class InputShapeError(BadInputError):
    """Inputs of a shape the engine was not built for (an AOTInductor package, or an ONNX file fixed to one image
    size, given an image of another size): the runner refuses or skips the images concerned, one by one."""


class ImageSizeError(DeployzooError):
    """An image whose size the model's resize turns into a side of 0 pixels (an extreme aspect ratio, such as
    1 x 5000): the original frameworks' resize fails on it too. ``problem`` says which size and why; callers
    name the file."""

    def __init__(self, problem: str):
        self.problem = problem
        super().__init__(problem)


class CheckpointError(DeployzooError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""
