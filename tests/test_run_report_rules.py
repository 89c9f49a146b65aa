"""report.md's protocol explanation: the IoU rule is the protocol's own (> 0.5 for refinedet-pytorch)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from deployzoo.eval.voc07 import PROTOCOLS
from deployzoo.run_report import accuracy_section


@pytest.mark.parametrize("protocol, rule", [("refinedet-pytorch", "IoU > 0.5"), ("voc-devkit", "IoU >= 0.5"),
                                            ("detectron2", "IoU > 0.5"), ("mmdet", "IoU >= 0.5")])
def test_the_report_states_the_protocols_own_iou_rule(protocol, rule):
    assert PROTOCOLS[protocol].rules.startswith(rule + " ")
    acc = {"metric": "VOC07 11-point mAP", "protocol": protocol, "value": 50.0, "published": 79.81,
           "published_source": "paper"}
    text = "\n".join(accuracy_section(SimpleNamespace(task="detection"), acc, 4, "images", False, False,
                                      "| table |", None))
    how = next(line for line in text.splitlines() if line.startswith("How it is computed"))
    assert f"rules: {rule} " in how
    other = "IoU >= 0.5" if rule == "IoU > 0.5" else "IoU > 0.5"
    assert other not in how  # the generic sentence no longer claims one rule for every protocol


def test_other_metrics_carry_no_voc_rules():
    acc = {"metric": "COCO box AP", "protocol": "standard", "value": 30.0, "published": 40.0,
           "published_source": "paper"}
    text = "\n".join(accuracy_section(SimpleNamespace(task="detection"), acc, 4, "images", False, False, "", None))
    assert "exact rules" not in text
