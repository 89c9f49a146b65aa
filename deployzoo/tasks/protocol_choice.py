"""Which evaluation protocol a run uses: the task's default (the one its published figure was measured
with) or the one asked for, refused with a clear message before any inference when unknown or removed."""
from __future__ import annotations

from typing import Any

from deployzoo.errors import DeployzooError


def choose_protocol(task: Any, protocol: str | None) -> str:
    """``protocol`` checked against ``task.protocols`` (None: ``task.protocols[0]``, the model's default).

    Raises:
        DeployzooError: a removed name (``task.retired_protocols``: the message says what to use instead)
            or an unknown one (the message lists the task's protocols).
    """
    chosen = protocol or task.protocols[0]
    if chosen in task.protocols:
        return chosen
    retired = getattr(task, "retired_protocols", {}).get(chosen)
    if retired:
        raise DeployzooError(f"{retired} (--protocol; the default for this model is {task.protocols[0]})")
    raise DeployzooError(f"unknown protocol '{chosen}' for {task.metric_name}; choose from {', '.join(task.protocols)}")


def protocol_equals(task: Any, protocol: str) -> str | None:
    """What ``protocol``'s figures equal (framework and file), where the task says so."""
    describe = getattr(task, "protocol_equals", None)
    return describe(protocol) if describe else None
