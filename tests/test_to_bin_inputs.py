"""`data to-bin` with image files checks every file before writing any .bin (issue 14 item 8)."""
from __future__ import annotations

import numpy as np

from deployzoo.cli import main


def test_to_bin_names_a_bad_listed_image_before_writing_anything(tmp_path, capsys):
    import cv2

    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((40, 60, 3), 90, np.uint8))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "bins"
    code = main(["data", "to-bin", "refinedet320-vgg16-voc", str(good), str(bad), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "Traceback" not in err
    assert not list(out.rglob("*.bin")) if out.exists() else True
