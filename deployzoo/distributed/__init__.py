"""Running one evaluation or prediction over many machines (Ray). Ray is optional: ``pip install deployzoo[ray]``.

``shards``: how a split is cut into work shards (no Ray needed); ``replica``: what one engine copy does with a
shard (no Ray needed); ``ray_eval``: the cluster, the actors, retries, the result shards and the report.
"""
from __future__ import annotations

from deployzoo.errors import DeployzooError

INSTALL_HINT = 'pip install "deployzoo[ray]"  (or: pip install "ray>=2.9")'


def require_ray():
    """The ``ray`` module, or a DeployzooError saying how to install it (raised before any work)."""
    try:
        import ray
    except ImportError as exc:
        raise DeployzooError(f"--ray needs Ray, which is not installed here ({exc}); install it with "
                             f"{INSTALL_HINT}, or run without --ray") from None
    return ray
