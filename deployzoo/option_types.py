"""argparse ``type=`` functions for numeric options, so an out-of-range value is refused by the parser (one
line naming the option, before any work) instead of being taken as given.

Why: a value that is only wrong by range silently changes a result. ``--max-dets -1`` became the Python slice
``[:-1]`` (every detection but the last), ``--score-thr nan`` kept nothing (every comparison with NaN is
false), ``--iters 0`` failed once per benchmark row after the work had started.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(minimum: int, what: str, maximum: int | None = None) -> Callable[[str], int]:
    """A parser for an int of at least ``minimum``; ``what`` says what the number counts ("detections"), or is the
    option's name ("--seed") for a number that counts nothing; ``maximum``: an upper bound where a huge value
    would fill the disk or start processes without end."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number of {what}, got '{text}'") from None
        if value < minimum:
            subject = what if what.startswith("--") else f"the number of {what}"  # an option name, or what it counts
            raise argparse.ArgumentTypeError(f"{subject} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            subject = what if what.startswith("--") else f"the number of {what}"
            raise argparse.ArgumentTypeError(f"{subject} must be at most {maximum}, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"  # argparse names the type in some messages
    return parse


def finite_number(what: str, minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    """A parser for a finite float (no nan/inf), at least ``minimum`` when given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number ({what}), got '{text}'") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{what} must be a finite number, got '{text}'")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be at least {minimum:g}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{what} must be at most {maximum:g}, got {text}")
        return value

    parse.__name__ = "finite number"
    return parse


# Upper bounds: generated images are written to disk (about 25 kB each), worker processes and threads are started.
MAX_GENERATED_IMAGES = 100_000
MAX_WORKERS = 256
MAX_THREADS = 1024
# Images per inference call: a batch of 1024 COCO-size inputs is already 10 GB of float32; a larger one fails in
# the allocator with a MemoryError traceback instead of a sentence.
MAX_BATCH = 1024
