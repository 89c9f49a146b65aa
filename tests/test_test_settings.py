"""Test-time settings (issue 17 item 5): --input-size / --max-size / --test-score-thr / --test-max-dets map onto
the models' constructor arguments, change what the model (and its exported graph) gives, travel in the ONNX
metadata and the reports; the defaults stay the official ones; bad values are refused with one error."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fine_tuned_helpers import D2_CASCADE, FSAF, MMDET_MASK_RCNN, PSPNET, REFINEDET

OFFICIAL = {
    REFINEDET: {"input_size": 320, "max_size": None, "score_threshold": 0.01, "max_dets": None},
    MMDET_MASK_RCNN: {"input_size": 800, "max_size": 1333, "score_threshold": 0.05, "max_dets": 100},
    D2_CASCADE: {"input_size": 800, "max_size": 1333, "score_threshold": 0.05, "max_dets": 100},
    FSAF: {"input_size": 800, "max_size": 1333, "score_threshold": 0.05, "max_dets": 100},
    PSPNET: {"input_size": 512, "max_size": 2048, "score_threshold": None, "max_dets": None},
}


def _image(seed: int = 0, hw=(240, 320)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*hw, 3), dtype=np.uint8)


def _spec(name, **settings):
    from deployzoo.fine_tuned import spec_for
    from deployzoo.registry import get_spec

    return spec_for(get_spec(name), settings=settings, quiet=True)


def test_defaults_are_the_official_ones():
    from deployzoo.models.d2_cascade_mask_rcnn import CascadeMaskRCNNConfig
    from deployzoo.models.fsaf import FSAFConfig
    from deployzoo.models.mask_rcnn import MaskRCNNConfig
    from deployzoo.models.refinedet import RefineDetConfig, refinedet_config
    from deployzoo.registry import get_spec, model_names
    from deployzoo.test_settings import settings_of

    for name in model_names():
        spec = get_spec(name)
        base = next(k for k in OFFICIAL if name.startswith(k))
        assert settings_of(spec) == {**OFFICIAL[base], "changed": []}, name
        # official values given as options change nothing: the very same spec
        given = {k: v for k, v in OFFICIAL[base].items() if v is not None}
        assert _spec(name, **given) is spec
    for config in (MaskRCNNConfig(), CascadeMaskRCNNConfig(), FSAFConfig()):
        assert (config.score_threshold, config.max_dets) == (0.05, 100)
    assert refinedet_config(320, 21) == RefineDetConfig()  # voc_refinedet['320']
    assert refinedet_config(512, 21).feature_maps == (64, 32, 16, 8)  # voc_refinedet['512']
    assert get_spec(MMDET_MASK_RCNN).preprocess.scale == (1333, 800)


@pytest.mark.parametrize("args,needle", [
    (["--input-size", "300"], "multiple of 64"),
    (["--input-size", "abc"], "--input-size: expected a whole number"),
    (["--input-size", "0"], "--input-size: expected 32..4096"),
    (["--test-score-thr", "nan"], "--test-score-thr: expected a score in [0, 1)"),
    (["--test-score-thr", "1"], "--test-score-thr: expected a score in [0, 1)"),
    (["--test-max-dets", "0"], "--test-max-dets: expected 1..10000"),
    (["--test-max-dets", "2.5"], "--test-max-dets: expected a whole number"),
    (["--max-size", "640"], "has no max size to set"),
])
def test_bad_values_are_refused_before_any_work(args, needle, tmp_path, capsys):
    from deployzoo.cli import main

    out = tmp_path / "m.onnx"
    assert main(["export", REFINEDET, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("error:") == 1 and not out.exists()


def test_rcnn_and_pspnet_values_are_checked_per_model(capsys):
    from deployzoo.errors import DeployzooError

    with pytest.raises(DeployzooError, match="--max-size 700 is below --input-size 800"):
        _spec(MMDET_MASK_RCNN, max_size=700)
    with pytest.raises(DeployzooError, match="has no score threshold to set"):
        _spec(PSPNET, score_threshold=0.3)
    psp = _spec(PSPNET, input_size=256, max_size=1024)
    assert psp.preprocess(_image(hw=(300, 400)))[0].shape == (3, 256, 341)  # keep-ratio, short side 256
    d2 = _spec(D2_CASCADE, input_size=400, max_size=600)
    assert d2.preprocess(_image(hw=(240, 600)))[0].shape == (3, 240, 600)  # long side capped at 600
    assert d2.preprocess(_image(hw=(240, 320)))[0].shape == (3, 400, 533)
    mm = _spec(MMDET_MASK_RCNN, input_size=600)
    assert mm.preprocess(_image(hw=(240, 320)))[0].shape == (3, 600, 800)
    # tracing and pure-inference benchmarks run a typical image at the new scale (640x480 COCO, padded to /32)
    assert mm.input_hw == (608, 800) and mm.make_example_inputs(1)["image"].shape == (1, 3, 608, 800)
    assert psp.input_hw == (256, 341) and psp.make_example_inputs(2)["image"].shape == (2, 3, 256, 341)


def test_refinedet_input_size_changes_the_network_input_and_priors():
    from deployzoo.engine import load_model

    spec = _spec(REFINEDET, input_size=512)
    assert spec.input_hw == (512, 512) and spec.preprocess(_image())[0].shape == (3, 512, 512)
    loaded = load_model(spec)
    with torch.no_grad():
        outputs = loaded.model(torch.from_numpy(spec.make_example_inputs(1)["image"]))
    priors = 3 * (64 ** 2 + 32 ** 2 + 16 ** 2 + 8 ** 2)
    assert [tuple(o.shape[1:]) for o in outputs] == [(priors, 4), (priors, 2), (priors, 4), (priors, 21)]
    assert spec.output_shapes["odm_conf"] == (priors, 21) and spec.make_postprocess().priors.shape == (priors, 4)


def _refinedet_detections(spec, model, image):
    x, meta = spec.preprocess(image)
    with torch.no_grad():
        raw = model(torch.from_numpy(x[None]))
    outputs = {n: t[0].numpy() for n, t in zip(spec.output_names, raw)}
    return spec.make_postprocess()(outputs, meta)


def _by_score(dets):
    order = np.argsort(-dets.scores, kind="stable")
    return dets.boxes[order], dets.scores[order], dets.labels[order]


def test_refinedet_score_threshold_and_max_dets_change_its_detections():
    from deployzoo.engine import load_model
    from deployzoo.registry import get_spec

    official, changed = get_spec(REFINEDET), _spec(REFINEDET, score_threshold=0.3, max_dets=5)
    model = load_model(official).model
    image = _image()
    everything = _refinedet_detections(official, model, image)
    kept = _refinedet_detections(changed, model, image)
    assert len(everything.scores) > 5 and (everything.scores <= 0.3).any()  # both settings bite
    boxes, scores, labels = _by_score(everything)
    expected = scores > 0.3
    assert len(kept.scores) == min(5, int(expected.sum())) and (kept.scores > 0.3).all()
    got = _by_score(kept)
    np.testing.assert_array_equal(got[1], scores[expected][:5])
    np.testing.assert_array_equal(got[0], boxes[expected][:5])
    np.testing.assert_array_equal(got[2], labels[expected][:5])


def _rcnn_feeds(hw=(256, 320)):
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, *hw), dtype=np.float32)
    return {"image": image, "img_hw": np.asarray([hw], dtype=np.float32)}


def test_rcnn_score_threshold_and_max_dets_reach_the_graph():
    """mmdet Mask R-CNN: test_cfg.rcnn score_thr / max_per_img are the box head's own (in the graph)."""
    from deployzoo.engine import load_model
    from deployzoo.registry import get_spec

    official = load_model(get_spec(MMDET_MASK_RCNN))
    spec = _spec(MMDET_MASK_RCNN, score_threshold=0.3, max_dets=7)
    model = spec.build_model()
    model.load_state_dict(official.model.state_dict())
    assert (model.config.score_threshold, model.config.max_dets) == (0.3, 7)
    assert spec.output_shapes["boxes"] == (7, 4) and spec.output_notes["masks"].startswith("[B,7,28,28]")
    feeds = {k: torch.from_numpy(v) for k, v in _rcnn_feeds().items()}
    with torch.no_grad():
        boxes, scores, labels, num_dets, _ = official.model(**feeds)
        b7, s7, l7, n7, m7 = model(**feeds)
    n = int(num_dets[0])
    above = scores[0, :n] > 0.3
    assert n > 7 and int(above.sum()) > 7 and (scores[0, :n] <= 0.3).any()  # both settings bite
    assert b7.shape == (1, 7, 4) and m7.shape == (1, 7, 28, 28) and int(n7[0]) == 7
    torch.testing.assert_close(s7[0], scores[0, :n][above][:7])
    torch.testing.assert_close(b7[0], boxes[0, :n][above][:7])
    torch.testing.assert_close(l7[0], labels[0, :n][above][:7])


def test_onnx_metadata_brings_the_settings_back_and_conflicts_are_refused(tmp_path):
    import onnx

    from deployzoo.errors import DeployzooError
    from deployzoo.fine_tuned import spec_for
    from deployzoo.registry import get_spec

    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    stored = {"input_size": 512, "max_size": None, "score_threshold": 0.3, "max_dets": 5,
              "changed": ["input_size", "max_dets", "score_threshold"]}
    for key, value in (("deployzoo.model", REFINEDET), ("deployzoo.test_settings", json.dumps(stored))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / "r.onnx"
    onnx.save(model, str(path))
    spec = spec_for(get_spec(REFINEDET), onnx=path, quiet=True)
    assert spec.test_settings == {"input_size": 512, "score_threshold": 0.3, "max_dets": 5}
    assert spec.input_hw == (512, 512) and spec.make_postprocess().detect.max_per_image == 5
    agreeing = spec_for(get_spec(REFINEDET), onnx=path, settings={"max_dets": 5}, quiet=True)
    assert agreeing.test_settings == spec.test_settings
    with pytest.raises(DeployzooError, match=r"exported with --input-size 512; the options ask for --input-size 320"):
        spec_for(get_spec(REFINEDET), onnx=path, settings={"input_size": 320}, quiet=True)


def test_a_file_made_elsewhere_takes_the_settings_given(tmp_path, capsys):
    """A .onnx without deployzoo metadata records no settings: the options are used as given (with a note),
    not refused as differing from settings the file never claimed."""
    import onnx

    from deployzoo.fine_tuned import spec_for
    from deployzoo.registry import get_spec

    path = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(path))
    spec = spec_for(get_spec("mmdet-fsaf-r50-fpn-1x"), onnx=path, settings={"input_size": 600, "max_size": 1000},
                    quiet=True)
    assert spec.test_settings == {"input_size": 600, "max_size": 1000}
    assert "has no deployzoo metadata" in capsys.readouterr().out
    assert spec_for(get_spec("mmdet-fsaf-r50-fpn-1x"), onnx=path, quiet=True).test_settings == {}
    assert capsys.readouterr().out == ""


def test_cache_key_and_reports_hold_the_settings(tmp_path):
    from deployzoo.cache import onnx_fields
    from deployzoo.cli import main
    from deployzoo.engine import load_model
    from deployzoo.registry import get_spec

    official = load_model(get_spec(REFINEDET))
    assert "test_settings" not in onnx_fields(official, 1, 17)  # official graphs keep their cache entries
    changed = load_model(_spec(REFINEDET, score_threshold=0.3))
    assert onnx_fields(changed, 1, 17)["test_settings"] == {"score_threshold": 0.3}

    task = get_spec(REFINEDET).evaluation
    root = task.make_synthetic(tmp_path / "voc", num_images=2)
    out = tmp_path / "eval"
    assert main(["eval", REFINEDET, "--data", str(root), "--backend", "pytorch", "--out", str(out),
                 "--test-score-thr", "0.3", "--test-max-dets", "4", "--workers", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_settings"] == {"input_size": 320, "max_size": None, "score_threshold": 0.3, "max_dets": 4,
                                        "changed": ["max_dets", "score_threshold"]}
    detections = json.loads((out / "detections.json").read_text())
    per_image: dict = {}
    for d in detections:
        per_image[d["file_name"]] = per_image.get(d["file_name"], 0) + 1
        assert d["score"] > 0.3
    assert per_image and max(per_image.values()) <= 4


@pytest.mark.slow
def test_refinedet_settings_round_trip_through_onnxruntime(tmp_path, capsys):
    """Export with the settings, run the file with ONNX Runtime (the settings come from its metadata), and
    with PyTorch given the same options: the same detections."""
    import onnx

    from deployzoo.cli import main
    from deployzoo.data.images import write_jpeg
    from deployzoo.export.onnx_export import read_metadata

    image = tmp_path / "img.jpg"
    write_jpeg(image, _image())
    options = ["--input-size", "512", "--test-score-thr", "0.3", "--test-max-dets", "5"]
    path = tmp_path / "r.onnx"
    assert main(["export", REFINEDET, "--out", str(path), *options]) == 0
    graph = onnx.load(str(path), load_external_data=False).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, 512, 512]
    assert json.loads(read_metadata(path)["deployzoo.test_settings"])["input_size"] == 512
    results = {}
    for run, args in (("onnx", ["--backend", "onnxruntime", "--onnx", str(path)]),
                      ("pytorch", ["--backend", "pytorch", *options])):
        assert main(["predict", REFINEDET, str(image), "--out", str(tmp_path / run), "--no-draw", *args]) == 0
        results[run] = json.loads((tmp_path / run / "predictions.json").read_text())
        info = json.loads((tmp_path / run / "predict.json").read_text())
        assert info["test_settings"]["changed"] == ["input_size", "max_dets", "score_threshold"], run
        assert info["test_settings"]["input_size"] == 512 and info["filters"]["score_thr"] == 0.0
    assert 0 < len(results["onnx"]) <= 5 and all(r["score"] > 0.3 for r in results["onnx"])
    assert [r["category"] for r in results["onnx"]] == [r["category"] for r in results["pytorch"]]
    np.testing.assert_allclose([r["score"] for r in results["onnx"]], [r["score"] for r in results["pytorch"]],
                               atol=1e-5)
    np.testing.assert_allclose([r["bbox"] for r in results["onnx"]], [r["bbox"] for r in results["pytorch"]],
                               atol=1e-3)


@pytest.mark.slow
def test_rcnn_settings_in_the_onnx_graph(tmp_path):
    """Mask R-CNN exported with a score threshold and max detections: ONNX Runtime gives what the PyTorch model
    built with them gives, and the file says which settings it holds."""
    from deployzoo.engine import load_model, make_backend
    from deployzoo.export.onnx_export import read_metadata
    from deployzoo.pipeline import export_model

    spec = _spec(MMDET_MASK_RCNN, score_threshold=0.3, max_dets=7, input_size=600)
    loaded = load_model(spec)
    result = export_model(loaded, tmp_path / "m.onnx")
    stored = json.loads(read_metadata(result.path)["deployzoo.test_settings"])
    assert (stored["score_threshold"], stored["max_dets"], stored["input_size"]) == (0.3, 7, 600)
    feeds = _rcnn_feeds()
    outputs = make_backend("onnxruntime", spec, 1, onnx_path=result.path).infer(feeds)
    with torch.no_grad():
        reference = loaded.model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    assert outputs["boxes"].shape == (1, 7, 4) and int(outputs["num_dets"][0]) == int(reference[3][0]) == 7
    assert (outputs["scores"][0] > 0.3).all()
    np.testing.assert_allclose(outputs["scores"], reference[1].numpy(), atol=1e-5)
    np.testing.assert_allclose(outputs["boxes"], reference[0].numpy(), atol=1e-3)


def test_settings_stay_with_a_fine_tuned_class_count(tmp_path):
    """A checkpoint with another class count builds its class variant: the settings go with it (load_model),
    and --classes with settings gives both (spec_for)."""
    from fine_tuned_helpers import fine_tuned_weights, write_checkpoint

    from deployzoo.engine import load_model
    from deployzoo.fine_tuned import spec_for
    from deployzoo.registry import get_spec

    named = spec_for(get_spec(REFINEDET), None, "car,bus", settings={"input_size": 512, "max_dets": 3}, quiet=True)
    priors = 3 * (64 ** 2 + 32 ** 2 + 16 ** 2 + 8 ** 2)
    assert named.class_names == ("car", "bus") and named.output_shapes["odm_conf"] == (priors, 3)
    checkpoint = write_checkpoint(REFINEDET, fine_tuned_weights(REFINEDET, 2), tmp_path / "ft.pth")
    loaded = load_model(_spec(REFINEDET, input_size=512, max_dets=3), checkpoint)
    assert loaded.spec.test_settings == {"input_size": 512, "max_dets": 3} and len(loaded.spec.class_names) == 2
    assert loaded.model.config.size == 512 and loaded.model.config.num_classes == 3
    assert loaded.spec.make_postprocess().detect.max_per_image == 3


@pytest.mark.slow
def test_run_report_holds_the_settings(tmp_path):
    from deployzoo.cli import main

    out = tmp_path / "run"
    assert main(["run", REFINEDET, "--out", str(out), "--num-images", "2", "--batch", "1", "--eval-batch", "1",
                 "--min-seconds", "0.2", "--test-max-dets", "3", "--test-score-thr", "0.2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["test_settings"] == {"input_size": 320, "max_size": None, "score_threshold": 0.2, "max_dets": 3,
                                       "changed": ["max_dets", "score_threshold"]}


def _detections(name, outputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [n,4], scores [n], labels [n]) of image 0 from a model's outputs (FSAF packs boxes and scores)."""
    outputs = [np.asarray(o.numpy() if isinstance(o, torch.Tensor) else o) for o in outputs]
    if name == FSAF:
        dets, labels, num_dets = outputs[:3]
        n = int(num_dets[0])
        return dets[0, :n, :4], dets[0, :n, 4], labels[0, :n]
    boxes, scores, labels, num_dets = outputs[:4]
    n = int(num_dets[0])
    return boxes[0, :n], scores[0, :n], labels[0, :n]


@pytest.mark.heavy
@pytest.mark.parametrize("name", [FSAF, D2_CASCADE])
def test_fsaf_and_cascade_settings_in_the_model_and_its_onnx(name, tmp_path):
    """FSAF (mmdet) and Cascade Mask R-CNN (detectron2) built with a score threshold and max detections give the
    official model's detections above the threshold, the first K of them (score filtering comes before NMS and
    the top-K cut in both, and a box above the threshold is only suppressed by higher ones), and the exported
    graph gives what the PyTorch model built with them gives, the settings in its metadata."""
    from deployzoo.engine import load_model, make_backend
    from deployzoo.export.onnx_export import read_metadata
    from deployzoo.pipeline import export_model
    from deployzoo.registry import get_spec

    official = load_model(get_spec(name))
    array, meta = official.spec.preprocess(_image(hw=(256, 320)))  # the model's own input scale and padding
    feeds = official.spec.make_feeds([array], [meta], 1)
    torch_feeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        boxes, scores, labels = _detections(name, official.model(**torch_feeds))
    assert scores.size >= 20, "stand-in weights gave too few detections for the settings to bite"
    threshold = float(scores[14])  # 14 detections score above it (ties aside), more than K = 7
    above = scores > threshold
    assert 7 < int(above.sum()) < scores.size
    spec = _spec(name, score_threshold=threshold, max_dets=7)
    loaded = load_model(spec)
    loaded.model.load_state_dict(official.model.state_dict())
    with torch.no_grad():
        eager = loaded.model(**torch_feeds)
    b7, s7, l7 = _detections(name, eager)
    assert s7.size == 7 and (s7 > threshold).all()
    np.testing.assert_allclose(s7, scores[above][:7], atol=1e-6)
    np.testing.assert_allclose(b7, boxes[above][:7], atol=1e-4)
    np.testing.assert_array_equal(l7, labels[above][:7])

    result = export_model(loaded, tmp_path / "m.onnx")
    stored = json.loads(read_metadata(result.path)["deployzoo.test_settings"])
    assert (stored["score_threshold"], stored["max_dets"]) == (threshold, 7)
    outputs = make_backend("onnxruntime", loaded.spec, 1, onnx_path=result.path).infer(feeds)
    ob, os_, ol = _detections(name, [outputs[k] for k in loaded.spec.output_names])
    assert os_.size == 7
    np.testing.assert_allclose(os_, s7, atol=1e-5)
    np.testing.assert_allclose(ob, b7, atol=1e-3)
    np.testing.assert_array_equal(ol, l7)
