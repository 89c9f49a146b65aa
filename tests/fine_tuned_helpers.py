"""Fine-tuned checkpoints for the tests: the stand-in (dz-init-v1) weights of an official model under its
official names, with the class-dependent head tensors cut down to another class count, row by row as each
framework lays them out (background last for detectron2 / mmdet classifiers, first for RefineDet)."""
from __future__ import annotations

import pickle
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

MMDET_MASK_RCNN = "mmdet-mask-rcnn-r50-fpn-1x"
D2_CASCADE = "d2-cascade-mask-rcnn-r50-fpn-3x"
FSAF = "mmdet-fsaf-r50-fpn-1x"
PSPNET = "mmseg-pspnet-r50-d8-voc12aug"
REFINEDET = "refinedet320-vgg16-voc"


def official_stand_in(name: str) -> dict[str, np.ndarray]:
    """The official-count stand-in weights of registry model ``name``, keyed by the official checkpoint's names."""
    return dict(_official_stand_in(name))


@lru_cache(maxsize=None)
def _official_stand_in(name: str) -> dict[str, np.ndarray]:
    from deployzoo.checkpoints.synthetic import synthetic_state_dict
    from deployzoo.registry import get_spec

    spec = get_spec(name)
    model = spec.build_model()
    weights = synthetic_state_dict(model, spec.synthetic_gains, seed=0, checkpoint_key=spec.checkpoint_key)
    key = spec.checkpoint_key or (lambda k: k)
    return {key(k): v.numpy() for k, v in weights.items()}


def _rows(name: str, n: int, tensor: np.ndarray) -> np.ndarray | None:
    """``tensor`` resized to ``n`` classes when ``name`` is a class-dependent head tensor, else None."""
    if re.fullmatch(r"roi_heads\.box_predictor\.\d\.cls_score\.(weight|bias)"
                    r"|roi_head\.bbox_head\.fc_cls\.(weight|bias)", name):
        return np.concatenate([tensor[:n], tensor[-1:]])  # background is the last row
    if re.fullmatch(r"roi_head\.bbox_head\.fc_reg\.(weight|bias)", name):
        return tensor[: 4 * n]
    if re.fullmatch(r"roi_heads\.mask_head\.predictor\.(weight|bias)|roi_head\.mask_head\.conv_logits\.(weight|bias)"
                    r"|bbox_head\.retina_cls\.(weight|bias)|decode_head\.conv_seg\.(weight|bias)", name):
        return tensor[:n]
    if re.fullmatch(r"odm_conf\.\d\.(weight|bias)", name):
        per_anchor = tensor.reshape(3, -1, *tensor.shape[1:])  # [A, C+1, ...], background first
        return np.ascontiguousarray(per_anchor[:, : n + 1]).reshape(3 * (n + 1), *tensor.shape[1:])
    return None


def fine_tuned_weights(name: str, num_classes: int) -> dict[str, np.ndarray]:
    weights = official_stand_in(name)
    for key, tensor in weights.items():
        resized = _rows(key, num_classes, tensor)
        if resized is not None:
            weights[key] = resized
    return weights


def write_checkpoint(name: str, weights: dict[str, np.ndarray], path: Path, meta: dict | None = None) -> Path:
    """In the model's official container: detectron2 .pkl, mmdet/mmseg {'state_dict', 'meta'}, bare RefineDet."""
    path = Path(path)
    if name == D2_CASCADE:
        with open(path, "wb") as f:
            pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f)
        return path
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
    torch.save(tensors if name == REFINEDET else {"state_dict": tensors, "meta": meta or {}}, path)
    return path
