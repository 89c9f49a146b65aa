"""Mixing our steps with the vendor benchmark tool's: .bin inputs out, output dumps in."""
from __future__ import annotations

import json

import numpy as np

from deployzoo.cli import main
from deployzoo.data.vendor_bin import read_bin, read_info, write_bin
from deployzoo.engine import make_backend


def test_to_bin_then_dumps_evaluate_like_the_engine(tmp_path, refinedet_spec, refinedet_onnx, synthetic_voc):
    bins = tmp_path / "bins"
    assert main(["data", "to-bin", "refinedet320-vgg16-voc", "--data", str(synthetic_voc), "--out", str(bins)]) == 0
    rows = read_info(bins / "input.info")
    assert [r.index for r in rows] == list(range(7))
    assert all((r.width, r.height) == (320, 320) for r in rows)
    originals = read_info(bins / "images.info")
    assert all(r.path.endswith(".jpg") and r.width > 0 for r in originals)

    # play the vendor tool: run each .bin at batch 1 and dump output k as <stem>_<k>.bin, 1-based
    engine = make_backend("onnxruntime", refinedet_spec, 1, onnx_path=refinedet_onnx)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    for row in rows:
        x = read_bin(row.path, (1, 3, 320, 320))
        outputs = engine.infer({"image": x})
        stem = row.path.rsplit("/", 1)[-1][: -len(".bin")]
        for k, name in enumerate(refinedet_spec.output_names, start=1):
            write_bin(dumps / f"{stem}_{k}.bin", outputs[name])

    assert main(["eval", "refinedet320-vgg16-voc", "--data", str(synthetic_voc), "--dumps", str(dumps),
                 "--workers", "0", "--out", str(tmp_path / "from-dumps")]) == 0
    assert main(["eval", "refinedet320-vgg16-voc", "--data", str(synthetic_voc), "--onnx", str(refinedet_onnx),
                 "--batch", "1", "--workers", "0", "--out", str(tmp_path / "engine")]) == 0
    from_dumps = json.loads((tmp_path / "from-dumps" / "metrics.json").read_text())
    direct = json.loads((tmp_path / "engine" / "metrics.json").read_text())
    assert from_dumps["headline"]["value"] == direct["headline"]["value"]
    assert from_dumps["images_evaluated"] == 7


def test_missing_dump_is_named(tmp_path, refinedet_spec, synthetic_voc, capsys):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    for k in range(4):
        write_bin(dumps / f"000001_{k}.bin", np.zeros(6375, np.float32))
    assert main(["eval", "refinedet320-vgg16-voc", "--data", str(synthetic_voc), "--dumps", str(dumps),
                 "--workers", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "000002" in err
