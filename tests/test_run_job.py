"""The main job on the embedded default: stand-in weights and a generated dataset, said so in the report."""
from __future__ import annotations

import json

import pytest

from deployzoo.cli import main


@pytest.mark.slow
def test_run_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "refinedet320-vgg16-voc", "--out", str(out), "--num-images", "5", "--batch", "1,2",
                 "--eval-batch", "2", "--min-seconds", "0.05", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "stand-in weights" in printed and "synthetic" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["stand_in_weights"] and report["synthetic_data"]
    assert report["agreement"]["verdict"] == "PASS"
    assert 0.0 <= report["accuracy"]["value"] <= 100.0 and report["accuracy"]["published"] == 79.81
    assert [c["batch_size"] for c in report["pure_inference"]] == [1, 2]
    assert all(c["stats"]["throughput"] > 0 for c in report["pure_inference"])
    assert report["end_to_end_over_pure"]["ratio"] > 0 and "replayed" in report["end_to_end_over_pure"]["pure_inputs"]
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert not {"first_full_batch", "batches"} & set(metrics)  # the fed inputs stay in memory, not in metrics.json
    text = (out / "report.md").read_text()
    assert text.index("stand-in weights") < text.index("## Accuracy")
    for section in ("## What this run did", "## Pictures", "## Accuracy", "### Published figure",
                    "## Engine against PyTorch", "### Pure inference", "### Whole pipeline",
                    "End-to-end / pure-inference throughput", "## Files written", "## Next steps"):
        assert section in text, section
    # issue 18 item 2, confusion by confusion
    measured = next(line for line in text.splitlines() if line.startswith("**Measured in this run"))
    assert "79.81" not in measured and "published" not in measured.lower()  # not on the published figure's line
    assert "says nothing about the trained model" in text
    assert "How it is computed (protocol 'refinedet-pytorch')" in text and "IoU > 0.5 without +1 pixel areas" in text
    assert "Why the per-class rows look odd" in text
    assert "Real-data" not in text
    assert "What it means:" in text  # the end-to-end / pure ratio explained
    assert "--checkpoint CHECKPOINT.pth --data DATASET_ROOT" in text
    # pictures and the plot embedded by relative paths that exist
    import re

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert any(link.startswith("eval/pictures/") for link in links) and "bench.png" in links
    assert all((out / link).is_file() for link in links)
    assert not list(out.rglob("*.onnx"))  # the graph is in the engine cache
