"""Task adapters: how a dataset is opened, synthesised and scored for one kind of model."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from deployzoo.structures import Detections

# Agreement with a reference engine (the accuracy guard): the reference's detections scoring at least 0.05 (the
# frameworks' test threshold), at most 20 per image on average, stand in for ground truth.
REFERENCE_TOP = 20
REFERENCE_MIN_SCORE = 0.05


def reference_truth(reference: Mapping[str, Detections], keys: Iterable[str]) -> dict[str, Detections]:
    """The reference's confident detections of each image in ``keys``, to score another engine against.

    One score threshold serves the whole sample, so none of the reference's own left-out detections outranks
    a kept one: the reference then scores 100 against itself.
    """
    keys = list(keys)
    scores = np.sort(np.concatenate([reference[k].scores for k in keys] or [np.zeros(0, np.float32)]))[::-1]
    threshold = REFERENCE_MIN_SCORE
    cap = REFERENCE_TOP * len(keys)
    if scores.size > cap:
        threshold = max(threshold, float(scores[cap - 1]))
    return {k: reference[k].top(None, threshold) for k in keys}
