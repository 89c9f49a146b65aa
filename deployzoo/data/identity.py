"""What identifies the images of a run, for resuming it: ``--resume`` must not take results computed on
other image files.

The run fingerprint held only the image count, so an interrupted run resumed on another dataset with the
same ids (a copy with other pictures, another year's split, a fixed-up set) silently mixed the first run's
detections into the second one's score. The digest covers each image's id, file name and byte size:
cheap (one stat per file) and changed by any re-encoded or replaced image. Annotations are not part of it:
fixing a ground-truth box and resuming is fine, the detections do not depend on it.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable


def images_digest(items: Iterable[tuple[str, str]]) -> str:
    """A short hex digest of ``(image id, path)`` pairs: id, file name and byte size of each, in id order.

    A file that cannot be stat'ed counts with size -1 (the run itself reports it)."""
    lines = []
    for image_id, path in sorted((str(i), str(p)) for i, p in items):
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1
        lines.append(f"{image_id}\t{os.path.basename(path)}\t{size}\n")
    # surrogateescape: a file name that is not valid UTF-8 (PEP 383 surrogates) hashes as its own bytes
    return hashlib.sha1("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()[:16]
