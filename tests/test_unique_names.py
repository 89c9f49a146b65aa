"""Inputs that share a file name or stem keep their own results and output files (issue 14, item 1).

One naming rule (deployzoo.data.inputs.output_names) serves predict's records and label maps, data to-bin's
.bin files, eval's label maps and eval --dumps' lookup; these tests check the rule and every command using it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from deployzoo.cli import main
from deployzoo.errors import DeployzooError

REFINEDET = "refinedet320-vgg16-voc"
PSPNET = "mmseg-pspnet-r50-d8-voc12aug"
FAMILIES = [REFINEDET, "mmdet-mask-rcnn-r50-fpn-1x", "d2-cascade-mask-rcnn-r50-fpn-3x", "mmdet-fsaf-r50-fpn-1x", PSPNET]


def _image(path: Path, seed: int, hw: tuple[int, int] = (48, 64)) -> Path:
    """A small random picture (PNG or JPEG by suffix); different seeds give different pictures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), hw[::-1], interpolation=cv2.INTER_LINEAR)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture()
def clashing(tmp_path, monkeypatch) -> dict[str, Path]:
    """a/x.png and b/x.png (one file name, two pictures), scene.jpg and scene.png (one stem), and byte copies of
    a/x.png and scene.jpg under names nobody shares, whose results must equal the originals'."""
    monkeypatch.chdir(tmp_path)
    files = {"ax": _image(Path("a/x.png"), 1), "bx": _image(Path("b/x.png"), 2),
             "sjpg": _image(Path("scene.jpg"), 3), "spng": _image(Path("scene.png"), 4)}
    files["ax_copy"] = Path(shutil.copy(files["ax"], "copy_of_ax.png"))
    files["sjpg_copy"] = Path(shutil.copy(files["sjpg"], "copy_of_scene.jpg"))
    return files


# ------------------------------------------------------------------------------------------- the rule


def output_names(paths):
    from deployzoo.data.inputs import output_names

    return output_names(paths)


def test_unique_stems_are_kept():
    assert output_names(["data/000001.jpg", "data/000002.jpg", "other/2008_000001.png"]) == [
        "000001", "000002", "2008_000001"]


def test_same_file_name_in_two_folders_gets_the_folder():
    assert output_names(["a/x.png", "b/x.png", "y.png"]) == ["a_x", "b_x", "y"]


def test_same_stem_in_one_folder_gets_the_extension():
    assert output_names(["scene.jpg", "scene.png"]) == ["scene_jpg", "scene_png"]


def test_the_fewest_folders_that_tell_a_group_apart():
    assert output_names(["p/a/x.png", "q/a/x.png", "r/x.png"]) == ["p_a_x", "q_a_x", "r_x"]
    assert output_names(["p/a/x.png", "q/a/x.png", "q/b/x.png"]) == ["p_a_x", "q_a_x", "b_x"]
    # folders cannot tell b/x.png from b/x.jpg: the group's names carry the extension
    assert output_names(["a/x.png", "b/x.png", "b/x.jpg"]) == ["a_x_png", "b_x_png", "x_jpg"]


def test_stems_differing_only_in_case_clash():
    # one file system's two files are another's one: they must not share label_maps/<stem>.png
    names = output_names(["a/Scene.png", "b/scene.png"])
    assert names == ["a_Scene", "b_scene"]


def test_relative_paths_name_the_folders_they_resolve_to(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    assert output_names(["x.png", "../other/x.png"]) == ["run_x", "other_x"]


def test_a_file_given_twice_is_refused_naming_it():
    with pytest.raises(DeployzooError, match=r"'a/x.png' and 'a/./x.png' are the same file, given twice"):
        output_names(["a/x.png", "b/y.png", "a/./x.png"])


def test_no_unique_name_is_refused_naming_the_inputs():
    with pytest.raises(DeployzooError, match=r"'d/X.png', 'd/x.png'.*no unique name"):
        output_names(["d/X.png", "d/x.png"])
    # a made name that another input already has
    with pytest.raises(DeployzooError, match=r"'a_x.png' and 'a/x.png' would both write output files named 'a_x'"):
        output_names(["a_x.png", "a/x.png", "b/x.png"])


def test_items_from_paths_ids_are_unique():
    from deployzoo.data.loader import items_from_paths

    items = items_from_paths(["a/x.png", "b/x.png", "scene.jpg", "scene.png", "z.png"])
    assert [i.image_id for i in items] == ["a_x", "b_x", "scene_jpg", "scene_png", "z"]
    assert [i.path for i in items] == ["a/x.png", "b/x.png", "scene.jpg", "scene.png", "z.png"]


# ------------------------------------------------------------------------------------------- predict


def _by_path(records: list[dict]) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for r in records:
        out.setdefault(r["path"], []).append((r["category_id"], tuple(r["bbox"]), r["score"]))
    return out


@pytest.mark.slow  # the real network (stand-in weights) on three images; the stand-in engine below is fast
def test_predict_keeps_each_input_s_own_detections(clashing):
    f = clashing
    order = ["ax", "bx", "ax_copy"]
    assert main(["predict", REFINEDET, "--backend", "pytorch", "--max-dets", "5", "--out", "o",
                 *[str(f[k]) for k in order]]) == 0
    records = json.loads(Path("o/predictions.json").read_text())
    by_path = _by_path(records)
    assert list(by_path) == [str(f[k]) for k in order]  # every input, in the order given, under its own path
    assert {r["file_name"] for r in records if r["path"] == "a/x.png"} == {"x.png"}  # file_name kept as before
    assert by_path["a/x.png"] == by_path["copy_of_ax.png"]
    assert by_path["a/x.png"] != by_path["b/x.png"]


def test_predict_keeps_each_input_s_own_detections_when_stems_clash(clashing, monkeypatch):
    """The same through a fast stand-in engine, for one stem in two extensions as well."""
    import deployzoo.pipeline
    from deployzoo.pipeline import Engine
    from test_predict_inputs import _StubRefineDet

    monkeypatch.setattr(deployzoo.pipeline, "open_engine",
                        lambda spec, *args, **kwargs: Engine(spec, _StubRefineDet(), None, None, "stub"))
    f = clashing
    order = ["sjpg", "spng", "ax", "bx", "sjpg_copy", "ax_copy"]
    assert main(["predict", REFINEDET, "--out", "o", *[str(f[k]) for k in order]]) == 0
    by_path = _by_path(json.loads(Path("o/predictions.json").read_text()))
    assert list(by_path) == [str(f[k]) for k in order]
    assert by_path["scene.jpg"] == by_path["copy_of_scene.jpg"] != by_path["scene.png"]
    assert by_path["a/x.png"] == by_path["copy_of_ax.png"] != by_path["b/x.png"]


@pytest.mark.parametrize("model", FAMILIES)
def test_predict_refuses_a_file_given_twice_before_any_work(tmp_path, monkeypatch, capsys, model):
    import deployzoo.engine
    import deployzoo.pipeline

    def no_engine(*args, **kwargs):
        raise AssertionError("weights loaded before the inputs were checked")

    monkeypatch.setattr(deployzoo.pipeline, "open_engine", no_engine)
    monkeypatch.setattr(deployzoo.engine, "load_model", no_engine)
    image = _image(tmp_path / "x.png", 0)
    out = tmp_path / "o"
    assert main(["predict", model, "--out", str(out), str(image), str(tmp_path / "." / "x.png")]) == 2
    assert "same file, given twice" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------------------- label maps


class _StubBackend:
    """Segmentation logits that follow the picture: class 1 wherever the first channel is above its mean."""

    batch_size = 1

    def infer(self, feeds):
        image = feeds["image"]
        logits = np.zeros((image.shape[0], 21, *image.shape[2:]), np.float32)
        logits[:, 1] = image[:, 0] - image[:, 0].mean(axis=(1, 2), keepdims=True)
        return {"seg_logits": logits}


def test_predict_label_maps_of_inputs_sharing_a_stem_are_their_own(clashing):
    from deployzoo.data.voc_seg import read_label_png
    from deployzoo.pipeline import Engine, predict_files
    from deployzoo.registry import get_spec

    f = clashing
    engine = Engine(get_spec(PSPNET), _StubBackend(), None, None, "stub")
    paths = [f["sjpg"], f["spng"], f["ax"], f["bx"], f["sjpg_copy"]]
    records = predict_files(engine, paths, out_dir="o")
    assert [r["label_map"] for r in records] == ["label_maps/scene_jpg.png", "label_maps/scene_png.png",
                                                 "label_maps/a_x.png", "label_maps/b_x.png",
                                                 "label_maps/copy_of_scene.png"]
    assert [r["path"] for r in records] == [str(p) for p in paths]
    assert [r["file_name"] for r in records] == ["scene.jpg", "scene.png", "x.png", "x.png", "copy_of_scene.jpg"]
    maps = {r["path"]: read_label_png(Path("o") / r["label_map"]) for r in records}
    assert np.array_equal(maps["scene.jpg"], maps["copy_of_scene.jpg"])
    assert not np.array_equal(maps["scene.jpg"], maps["scene.png"])
    assert not np.array_equal(maps["a/x.png"], maps["b/x.png"])


def test_write_label_maps_and_records_name_clashing_stems_apart(tmp_path):
    from deployzoo.data.voc_seg import read_label_png
    from deployzoo.predictions import records_for, write_label_maps
    from deployzoo.registry import get_spec
    from deployzoo.structures import LabelMap

    first, second = np.zeros((4, 5), np.uint8), np.full((4, 5), 7, np.uint8)
    items = [("scene.jpg", LabelMap(first)), ("scene.png", LabelMap(second))]
    folder = write_label_maps(tmp_path, items)
    assert np.array_equal(read_label_png(folder / "scene_jpg.png"), first)
    assert np.array_equal(read_label_png(folder / "scene_png.png"), second)
    records = records_for(get_spec(PSPNET), items)
    assert [r["label_map"] for r in records] == ["label_maps/scene_jpg.png", "label_maps/scene_png.png"]
    # unique stems keep the layout as it was
    records = records_for(get_spec(PSPNET), [("2007_000033.jpg", LabelMap(first))])
    assert records[0]["label_map"] == "label_maps/2007_000033.png" and "path" not in records[0]


def test_eval_label_maps_are_named_by_split_names():
    from deployzoo.pipeline import split_names

    class Split:  # ids whose image files share a stem only up to the dot
        ids = ["a.b", "a.c", "2007_000033"]

        @staticmethod
        def image_path(image_id: str) -> Path:
            return Path("VOC2012/JPEGImages") / f"{image_id}.jpg"

    assert split_names(Split()) == {"a.b": "a.b", "a.c": "a.c", "2007_000033": "2007_000033"}


# ------------------------------------------------------------------------------------------- data to-bin


def test_to_bin_writes_one_bin_per_input_and_takes_options_after_images(clashing, refinedet_spec):
    from deployzoo.data.vendor_bin import read_bin, read_info

    f = clashing
    inputs = [str(f[k]) for k in ("ax", "bx", "sjpg", "spng", "ax_copy")]
    # options after the images, as for every other command
    assert main(["data", "to-bin", REFINEDET, "--out", "bins", *inputs[:2], "--workers", "0", *inputs[2:]]) == 0
    rows = read_info("bins/input.info")
    assert [Path(r.path).name for r in rows] == ["a_x.bin", "b_x.bin", "scene_jpg.bin", "scene_png.bin",
                                                 "copy_of_ax.bin"]
    assert [r.path for r in read_info("bins/images.info")] == [str(Path(p).resolve()) for p in inputs]
    arrays = [read_bin(r.path, (3, 320, 320)) for r in rows]
    assert np.array_equal(arrays[0], arrays[4])  # a/x.png's own input, not b's
    assert not np.array_equal(arrays[0], arrays[1])
    assert not np.array_equal(arrays[2], arrays[3])
    # and the images before the options, too
    assert main(["data", "to-bin", REFINEDET, *inputs, "--out", "bins2"]) == 0
    assert [Path(r.path).name for r in read_info("bins2/input.info")] == [Path(r.path).name for r in rows]


@pytest.mark.parametrize("model", FAMILIES[1:])
def test_to_bin_every_family_names_every_graph_input_apart(clashing, model):
    from deployzoo.data.vendor_bin import read_info
    from deployzoo.registry import get_spec

    spec = get_spec(model)
    f = clashing
    assert main(["data", "to-bin", model, "--out", "bins", str(f["ax"]), str(f["bx"]), str(f["sjpg"]),
                 str(f["spng"])]) == 0
    names = ["a_x", "b_x", "scene_jpg", "scene_png"]
    assert [Path(r.path).stem for r in read_info("bins/input.info")] == names
    blobs = [Path(f"bins/{n}.bin").read_bytes() for n in names]
    assert blobs[0] != blobs[1] and blobs[2] != blobs[3]
    for extra in set(spec.input_names) - {spec.input_name}:  # e.g. img_hw: <input>/<name>.bin
        assert sorted(p.stem for p in Path("bins", extra).iterdir()) == sorted(names)


def test_to_bin_refuses_a_file_given_twice_before_writing(clashing, capsys):
    assert main(["data", "to-bin", REFINEDET, "--out", "bins", "a/x.png", "b/x.png", "./a/x.png"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert not Path("bins").exists()


# ------------------------------------------------------------------------------------------- to-bin -> dumps -> eval


def test_to_bin_and_eval_dumps_agree_on_a_coco_split_whose_files_share_a_stem(tmp_path):
    """COCO ids are numbers and file names may sit in folders: to-bin names the .bin files, eval --dumps finds
    the dumps of the same names (before, to-bin wrote x.bin twice and eval looked for '<id>_<k>.bin')."""
    from deployzoo.data.synthetic_coco import make_synthetic_coco
    from deployzoo.data.vendor_bin import read_info, write_bin
    from deployzoo.registry import get_spec

    model = "mmdet-mask-rcnn-r50-fpn-1x@800x1216"
    spec = get_spec(model)
    root = make_synthetic_coco(tmp_path / "coco", num_images=2, seed=0)
    ann_path = root / "annotations" / "instances_val2017.json"
    coco = json.loads(ann_path.read_text())
    for image, folder in zip(coco["images"], ("a", "b")):
        moved = root / "val2017" / folder / "x.jpg"
        moved.parent.mkdir()
        (root / "val2017" / image["file_name"]).rename(moved)
        image["file_name"] = f"{folder}/x.jpg"
    ann_path.write_text(json.dumps(coco))

    assert main(["data", "to-bin", model, "--data", str(root), "--out", str(tmp_path / "bins")]) == 0
    rows = read_info(tmp_path / "bins" / "input.info")
    assert [Path(r.path).name for r in rows] == ["a_x.bin", "b_x.bin"]
    # play the vendor tool: one dump per output and image, named after the .bin, 0-based, nothing detected
    dumps = tmp_path / "dumps"
    for row in rows:
        stem = Path(row.path).stem
        for k, name in enumerate(spec.output_names):
            dtype = np.dtype(spec.output_dtypes.get(name, "float32"))
            write_bin(dumps / f"{stem}_{k}.bin", np.zeros(spec.output_shapes[name], dtype), dtype)
    assert main(["eval", model, "--data", str(root), "--dumps", str(dumps), "--workers", "0",
                 "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["images_evaluated"] == 2


# ------------------------------------------------------------------------------------------- --batch


_BATCH_COMMANDS = {
    "predict": ["predict", REFINEDET, "--out", "o", "x.png"],
    "eval": ["eval", REFINEDET, "--data", "d"],
    "compare": ["compare", REFINEDET],
    "bench": ["bench", REFINEDET],
    "matrix": ["matrix", "--out", "m"],
    "run": ["run", REFINEDET, "--out", "r"],
    "export": ["export", REFINEDET, "--out", "m.onnx"],
}


@pytest.mark.parametrize("command", sorted(_BATCH_COMMANDS))
@pytest.mark.parametrize("value", ["0", "-2"])
def test_batch_below_one_is_refused_as_a_batch_size(command, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*_BATCH_COMMANDS[command], "--batch", value])
    assert exc.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # below the usage lines
    assert "argument --batch: a batch size" in error and "at least 1" in error and "dynamic" not in error


def test_run_eval_batch_below_one_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["run", REFINEDET, "--out", "r", "--eval-batch", "0"])
    assert "argument --eval-batch: a batch size" in capsys.readouterr().err


def test_unknown_options_are_still_refused(capsys):
    with pytest.raises(SystemExit):
        main(["data", "to-bin", REFINEDET, "--out", "b", "x.png", "--bogus"])
    assert "--bogus" in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(SystemExit):
        main(["bench", REFINEDET, "extra"])
    assert "unrecognized arguments: extra" in capsys.readouterr().err
