"""Which model of the zoo a checkpoint belongs to, from its key names: for errors when the wrong file is given.

Each registry family's expected checkpoint keys are its model's state-dict names written the official way
(``ModelSpec.checkpoint_key``), plus whatever its rules ignore by name. The models are built on the meta
device, so this costs no weights and little time; it runs only when a checkpoint does not fit.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from deployzoo.registry import ModelSpec, get_spec, model_names

_LOOKS_LIKE = 0.9  # share of a checkpoint's keys a family must expect to be named as its likely source


@dataclass(frozen=True)
class _Family:
    names: tuple[str, ...]  # registry names sharing these checkpoint keys (variants of one model)
    keys: frozenset[str]  # official checkpoint key names
    ignored: tuple[str, ...]  # patterns of checkpoint keys the family's rules ignore by name

    def expects(self, key: str) -> bool:
        return key in self.keys or any(re.fullmatch(p, key) for p in self.ignored)


def official_keys(spec: ModelSpec) -> frozenset[str]:
    """The checkpoint key names ``spec``'s model is filled from (keys its rules keep at init left out)."""
    import torch

    with torch.device("meta"):
        model = spec.build_model()
    rules = spec.checkpoint_rules
    keys = [k for k in model.state_dict() if rules is None or rules.keep_init_reason(k) is None]
    return frozenset(spec.checkpoint_key(k) if spec.checkpoint_key else k for k in keys)


@lru_cache(maxsize=1)
def _families() -> tuple[_Family, ...]:
    by_keys: dict[frozenset[str], list[ModelSpec]] = {}
    for name in model_names():
        spec = get_spec(name)
        by_keys.setdefault(official_keys(spec), []).append(spec)
    return tuple(
        _Family(tuple(s.name for s in specs), keys,
                tuple(p for p, _ in getattr(specs[0].checkpoint_rules, "ignore", ())))
        for keys, specs in by_keys.items()
    )


def describe_mismatch(spec: ModelSpec, checkpoint_keys: Iterable[str], model_keys: Mapping[str, object]) -> str | None:
    """One line for a checkpoint that does not fit ``spec``: how many of the expected keys it holds and, when
    its keys are (nearly all) those of another model of the zoo, which. None when neither says anything useful.

    ``model_keys``: the model's state dict (names only are used).
    """
    rules = spec.checkpoint_rules
    keys = [k for k in checkpoint_keys if rules is None or rules.ignore_reason(k) is None]
    expected = [k for k in model_keys if rules is None or rules.keep_init_reason(k) is None]
    present = len({rules.rename(k) if rules is not None else k for k in keys} & set(expected))
    guess = None
    if keys:
        own = official_keys(spec)
        scored = [(sum(f.expects(k) for k in keys) / len(keys), f) for f in _families() if f.keys != own]
        share, family = max(scored, key=lambda pair: pair[0], default=(0.0, None))
        if family is not None and share >= _LOOKS_LIKE:
            guess = f"this looks like a checkpoint of {' / '.join(family.names)}"
    if present == 0:
        line = f"none of the {len(expected)} expected keys is present"
    elif guess is not None:
        line = f"only {present} of the {len(expected)} expected keys are present"
    else:
        return None
    return f"{line}: {guess}" if guess else line
