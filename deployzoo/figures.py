"""A headline figure as printed: never "nan".

An undefined figure (COCO AP, VOC mAP or mIoU of images without any ground truth to score against) is NaN
in memory and ``null`` with the reason in every JSON file (deployzoo.jsonio); printed, it says the same
instead of "nan", which reads like a broken run or a number.
"""
from __future__ import annotations

import math


def undefined_reason(metric_name: str) -> str:
    """Why ``metric_name`` has no value (the text metrics.json's ``null_values`` gives too)."""
    return f"{metric_name} is undefined on these images: there is no ground truth to score against"


def headline_text(value: float | None, metric_name: str, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or ``n/a (<why>)`` when it is None, NaN or infinite."""
    if value is None or not math.isfinite(float(value)):
        return f"n/a ({undefined_reason(metric_name)})"
    return f"{float(value):.{digits}f}"
