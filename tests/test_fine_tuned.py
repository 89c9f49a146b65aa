"""Fine-tuned checkpoints (issue 17): the class count read strictly from the head tensors for every model family,
the class names (checkpoint meta, --classes, dataset, generic), and the errors."""
from __future__ import annotations

import pytest

from deployzoo.errors import BadInputError, CheckpointError, DeployzooError
from fine_tuned_helpers import (D2_CASCADE, FSAF, MMDET_MASK_RCNN, PSPNET, REFINEDET, fine_tuned_weights,
                                write_checkpoint)

FAMILIES = [
    (D2_CASCADE, 3, "roi_heads.box_predictor.0.cls_score.weight [4, 1024]"),
    (MMDET_MASK_RCNN, 5, "roi_head.bbox_head.fc_cls.weight [6, 1024]"),
    (FSAF, 7, "bbox_head.retina_cls.weight [7, 256, 3, 3]"),
    (PSPNET, 4, "decode_head.conv_seg.weight [4, 512, 1, 1]"),
    (REFINEDET, 2, "odm_conf.0.weight [9, 256, 3, 3]"),
]


@pytest.mark.parametrize("name,count,tensor", FAMILIES)
def test_count_is_inferred_from_the_head_and_the_model_built_for_it(name, count, tensor, tmp_path):
    from deployzoo.engine import load_model
    from deployzoo.fine_tuned import spec_for
    from deployzoo.registry import get_spec

    path = write_checkpoint(name, fine_tuned_weights(name, count), tmp_path / "ft.pth")
    spec = spec_for(get_spec(name), path, quiet=True)
    assert len(spec.class_names) == count and spec.class_names == tuple(f"class_{i}" for i in range(count))
    loaded = load_model(spec, path)  # strict: every tensor fills the model built for that count
    assert f"{count} classes, inferred from {tensor}" in loaded.mapping_report.format()
    assert "generic names" in loaded.mapping_report.classes
    if name == MMDET_MASK_RCNN:  # the official spec given a fine-tuned file builds the variant itself
        assert load_model(get_spec(name), path).spec.class_names == spec.class_names


def test_disagreeing_heads_are_one_error_listing_each_tensor(tmp_path):
    from deployzoo.engine import load_model
    from deployzoo.registry import get_spec

    weights = fine_tuned_weights(MMDET_MASK_RCNN, 3)
    weights["roi_head.mask_head.conv_logits.weight"] = weights["roi_head.mask_head.conv_logits.weight"][:2]
    path = write_checkpoint(MMDET_MASK_RCNN, weights, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        load_model(get_spec(MMDET_MASK_RCNN), path)
    text = str(info.value)
    assert "disagree on the number of classes (2, 3)" in text
    assert "roi_head.mask_head.conv_logits.weight  [2, 256, 1, 1]" in text and "(dim 0 = C: 2 classes)" in text
    assert "roi_head.bbox_head.fc_reg.weight  [12, 1024]  (dim 0 = 4C: 3 classes)" in text


def test_a_changed_backbone_is_still_refused(tmp_path):
    from deployzoo.engine import load_model
    from deployzoo.registry import get_spec

    weights = fine_tuned_weights(FSAF, 3)
    weights["backbone.conv1.weight"] = weights["backbone.conv1.weight"][:32]
    path = write_checkpoint(FSAF, weights, tmp_path / "ft.pth")
    with pytest.raises(CheckpointError, match=r"backbone\.conv1\.weight: checkpoint \[32, 3, 7, 7\] vs model"):
        load_model(get_spec(FSAF), path)


@pytest.mark.parametrize("meta", [{"dataset_meta": {"classes": ["cat", "dog", "eel"]}},
                                  {"CLASSES": ["cat", "dog", "eel"]}])
def test_names_come_from_the_checkpoint_meta(meta, tmp_path):
    from deployzoo.fine_tuned import spec_for
    from deployzoo.registry import get_spec

    path = write_checkpoint(FSAF, fine_tuned_weights(FSAF, 3), tmp_path / "ft.pth", meta=meta)
    spec = spec_for(get_spec(FSAF), path, quiet=True)
    assert spec.class_names == ("cat", "dog", "eel") and spec.category_ids is None
    assert spec.class_names_source.startswith("checkpoint meta.")
    assert spec.evaluation.class_names == ("cat", "dog", "eel")


@pytest.mark.parametrize("count", [80, 3])
def test_meta_names_of_another_count_are_dropped_with_a_warning(count, tmp_path, capsys):
    """The heads decide; meta names that do not fit (an abbreviated CLASSES, a stale meta) are not used."""
    from deployzoo.engine import load_model
    from deployzoo.fine_tuned import spec_for
    from deployzoo.registry import get_spec

    official = get_spec(FSAF)
    path = write_checkpoint(FSAF, fine_tuned_weights(FSAF, count), tmp_path / "ft.pth", meta={"CLASSES": ["person"]})
    spec = spec_for(official, path, quiet=True)
    expected = official.class_names if count == 80 else tuple(f"class_{i}" for i in range(count))
    assert spec.class_names == expected
    assert "meta.CLASSES names 1 class(es) (person) but the head tensors have" in capsys.readouterr().err
    assert load_model(official, path).spec.class_names == expected  # the library entry point too


def test_classes_option_list_file_and_count_mismatch(tmp_path):
    from deployzoo.fine_tuned import parse_classes, spec_for
    from deployzoo.registry import get_spec

    path = write_checkpoint(REFINEDET, fine_tuned_weights(REFINEDET, 3), tmp_path / "ft.pth")
    names = tmp_path / "classes.txt"
    names.write_text("boat\n\ncar\nbus\n")
    assert parse_classes(str(names)) == ("boat", "car", "bus") == parse_classes("boat, car,bus")
    spec = spec_for(get_spec(REFINEDET), path, str(names), quiet=True)
    assert spec.class_names == ("boat", "car", "bus") and spec.output_shapes["odm_conf"] == (6375, 4)
    assert spec.evaluation.class_names == ("boat", "car", "bus")
    with pytest.raises(DeployzooError, match=r"3 classes, inferred from odm_conf\.0\.weight \[12, 256, 3, 3\], but "
                                             r"the class names \(--classes\) are 2: boat, car"):
        spec_for(get_spec(REFINEDET), path, "boat,car", quiet=True)
    with pytest.raises(BadInputError, match="given twice: car"):
        parse_classes("car,bus,car")


def test_names_from_the_coco_dataset_with_its_own_category_ids(tmp_path):
    import json

    from deployzoo.fine_tuned import spec_for
    from deployzoo.registry import get_spec

    path = write_checkpoint(FSAF, fine_tuned_weights(FSAF, 3), tmp_path / "ft.pth")
    ann = tmp_path / "instances.json"
    cats = [{"id": 17, "name": "b"}, {"id": 5, "name": "a"}, {"id": 40, "name": "c"}]
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    spec = spec_for(get_spec(FSAF), path, annotations=ann, data=tmp_path, quiet=True)
    assert spec.class_names == ("a", "b", "c") and spec.category_ids == (5, 17, 40)  # id order
    spec = spec_for(get_spec(FSAF), path, "c,a,b", annotations=ann, data=tmp_path, quiet=True)
    assert spec.category_ids == (40, 5, 17)  # matched by name
    with pytest.raises(BadInputError, match="class\\(es\\) z are not among the dataset's categories"):
        spec_for(get_spec(FSAF), path, "a,b,z", annotations=ann, data=tmp_path, quiet=True)


def test_the_official_checkpoint_keeps_the_official_spec(tmp_path):
    from deployzoo.fine_tuned import spec_for
    from deployzoo.registry import get_spec
    from fine_tuned_helpers import official_stand_in

    spec = get_spec(PSPNET)
    path = write_checkpoint(PSPNET, official_stand_in(PSPNET), tmp_path / "official.pth")
    assert spec_for(spec, path, quiet=True) is spec
    assert spec_for(spec, None, quiet=True) is spec


@pytest.mark.parametrize("name,names", [(FSAF, ("a", "b", "c")), (REFINEDET, ("boat", "car")),
                                        (PSPNET, ("background", "road", "car", "tree"))])
def test_synthetic_sets_are_drawn_with_the_models_classes(name, names, tmp_path):
    from deployzoo.fine_tuned import spec_for
    from deployzoo.registry import get_spec

    spec = spec_for(get_spec(name), None, ",".join(names), quiet=True)  # stand-in weights for that many classes
    assert spec.class_names == names and len(spec.class_names) == len(names)
    task = spec.evaluation
    root = task.make_synthetic(tmp_path / "synthetic", num_images=3)
    checked = task.validate(root)
    handles, _ = task.load_ground_truth(checked.dataset)
    if name == FSAF:
        cats = checked.dataset.coco.cats
        assert sorted(c["name"] for c in cats.values()) == list(names) and sorted(cats) == [1, 2, 3]
        assert {a["category_id"] for a in checked.dataset.coco.anns.values()} <= {1, 2, 3}
    elif name == REFINEDET:
        labels = {int(v) for h in handles.values() for v in h.labels}
        assert labels and labels <= {0, 1}
    else:
        values = {int(v) for h in handles.values() for v in set(task._read_gt(h).ravel().tolist())}
        assert values <= {0, 1, 2, 3, 255} and len(values - {255}) > 1


def test_an_onnx_file_brings_its_class_names(tmp_path):
    import onnx

    from deployzoo.fine_tuned import spec_for
    from deployzoo.registry import get_spec

    def fake(path, names):
        model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
        entry = model.metadata_props.add()
        entry.key, entry.value = "deployzoo.class_names", __import__("json").dumps(names)
        onnx.save(model, str(path))
        return path

    named = fake(tmp_path / "named.onnx", ["cat", "dog"])
    spec = spec_for(get_spec(REFINEDET), onnx=named, quiet=True)
    assert spec.class_names == ("cat", "dog") and spec.output_shapes["odm_conf"] == (6375, 3)
    generic = fake(tmp_path / "generic.onnx", ["class_0", "class_1"])
    assert spec_for(get_spec(REFINEDET), None, "car,bus", onnx=generic, quiet=True).class_names == ("car", "bus")
    assert spec_for(get_spec(REFINEDET), onnx=generic, quiet=True).class_names == ("class_0", "class_1")


def test_an_onnx_file_of_another_model_brings_no_class_names(tmp_path, capsys):
    """Its names say nothing about this model: no note about them (the ONNX check then refuses the file)."""
    import json

    import onnx

    from deployzoo.fine_tuned import spec_for
    from deployzoo.registry import get_spec

    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    for key, value in (("deployzoo.model", PSPNET), ("deployzoo.class_names", json.dumps(["a"] * 21))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(tmp_path / "psp.onnx"))
    spec = spec_for(get_spec(REFINEDET), onnx=tmp_path / "psp.onnx")
    assert spec.class_names == get_spec(REFINEDET).class_names and "classes" not in capsys.readouterr().out
