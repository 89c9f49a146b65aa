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


class CheckpointError(DeployzooError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""
