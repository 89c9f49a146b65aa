"""Engine-vs-PyTorch verdicts: PASS on a faithful engine, FAIL on a wrong one."""
from __future__ import annotations

import json

from deployzoo.cli import main
from deployzoo.data.loader import items_from_paths
from deployzoo.engine import load_model
from deployzoo.pipeline import export_model, open_engine
from deployzoo.verify import compare_engines


def test_compare_command_passes_on_the_exported_engine(tmp_path, refinedet_checkpoint, refinedet_onnx, refinedet_case):
    out = tmp_path / "cmp"
    assert main(["compare", "refinedet320-vgg16-voc", "--checkpoint", str(refinedet_checkpoint), "--onnx",
                 str(refinedet_onnx), "--out", str(out), "--images", str(refinedet_case["image"])]) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["verdict"] == "PASS" and report["images"] == 1
    assert report["detections"]["matched"] == 9602
    assert "1e-4" in report["tolerances"]["outputs"]


def test_compare_fails_when_the_engine_has_other_weights(tmp_path, refinedet_spec, refinedet_loaded, refinedet_case):
    other = load_model(refinedet_spec, seed=1)
    path = export_model(other, tmp_path / "other.onnx", batch_size=1).path
    engine = open_engine(refinedet_spec, "onnxruntime", 1, onnx_path=path)
    reference = open_engine(refinedet_spec, "pytorch", 1, loaded=refinedet_loaded)
    agreement = compare_engines(engine, reference, items_from_paths([refinedet_case["image"]]))
    assert not agreement.ok
    assert "FAIL" in agreement.table()
    assert agreement.detections.unmatched_reference > 0


class _LogitsBackend:
    """Segmentation logits of a fixed pattern, shifted by ``delta`` at pixel (0, 0) of classes 0 and 1."""

    def __init__(self, margin: float, delta: float):
        self.name, self.precision, self.batch_size = "fake", "fp32", 1
        self.margin, self.delta = margin, delta

    def infer(self, feeds):
        import numpy as np

        n, _, h, w = feeds["image"].shape
        logits = np.zeros((n, 21, h, w), np.float32)
        logits[:, 0] = 1.0
        logits[:, 1] = 1.0 - self.margin  # class 0 wins everywhere by ``margin``
        logits[:, 0] -= self.delta
        logits[:, 1] += self.delta
        return {"seg_logits": logits}

    def describe(self):
        return {"backend": self.name, "precision": self.precision}

    def close(self):
        pass


def _logits_engine(spec, margin: float, delta: float):
    from deployzoo.pipeline import Engine

    return Engine(spec, _LogitsBackend(margin, delta), None, None, "fake")


def test_label_maps_may_differ_only_within_what_the_logit_differences_can_flip(tmp_path):
    """Two engines whose logits differ by d may disagree on a pixel whose top-two margin is below 2d (either
    label is right there), and on no other: the allowance follows the measured difference, at least 1e-5."""
    import numpy as np
    from PIL import Image

    from deployzoo.registry import get_spec

    spec = get_spec("mmseg-pspnet-r50-d8-voc12aug")
    image = tmp_path / "flat.png"
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(image)
    items = items_from_paths([image])
    margin = 4e-5  # > the fixtures' 1e-5: a near-tie only because the logits differ by 3e-5 (> margin / 2)
    flips = compare_engines(_logits_engine(spec, margin, 3e-5), _logits_engine(spec, margin, 0.0), items)
    assert flips.labels.differing == flips.labels.pixels == 24 * 32
    assert flips.ok, flips.table()
    assert "within 6e-05" in flips.table()
    # The same flip against a margin of 1e-3 is a real disagreement, however small the tensor error reads.
    real = compare_engines(_logits_engine(spec, 1e-3, 6e-4), _logits_engine(spec, 1e-3, 0.0), items)
    assert real.labels.differing == 24 * 32 and not real.ok
    assert "FAIL" in real.table()


def _dets(boxes, scores, labels):
    import numpy as np

    from deployzoo.structures import Detections

    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int64))


def test_near_tied_scores_on_either_side_of_a_cut_are_swaps_and_nothing_else_is():
    """The 100th detection of one engine and of the other may differ where their scores tie to 1e-5 (the
    max-detections cut or an NMS decision fell either way): a swap, which passes; a larger gap does not."""
    from deployzoo.compare import match_detections

    shared_boxes, shared_scores = [[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.8]
    engine = _dets(shared_boxes + [[50, 50, 60, 60]], shared_scores + [0.3000004], [1, 2, 3])
    reference = _dets(shared_boxes + [[70, 10, 90, 30]], shared_scores + [0.3], [1, 2, 7])
    m = match_detections(engine, reference)
    assert (m.matched, m.swaps, m.unmatched_engine, m.unmatched_reference) == (2, 1, 0, 0) and m.ok
    far = match_detections(_dets(shared_boxes + [[50, 50, 60, 60]], shared_scores + [0.30002], [1, 2, 3]), reference)
    assert (far.matched, far.swaps, far.unmatched_engine, far.unmatched_reference) == (2, 0, 1, 1) and not far.ok
    # A swap needs a partner on the other side: one extra detection is never explained away.
    extra = match_detections(engine, _dets(shared_boxes, shared_scores, [1, 2]))
    assert (extra.swaps, extra.unmatched_engine) == (0, 1) and not extra.ok
