"""``ray start`` for a worker node of a multi-node Ray cluster on ONE machine, every process on 127.0.0.1.

Ray 2.60 binds to the machine's other interface unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set, and
with that setting ``ray start --address=...`` refuses to join a head ("Multi-node Ray clusters are not
supported on Windows and OSX", ``ray/scripts/scripts.py``). This launcher gives only the ``ray start`` CLI
module a view of ``ray_constants`` in which ``ENABLE_RAY_CLUSTER`` is True; every other module (services,
node, raylet, workers) keeps reading the real constant, so the node still binds to 127.0.0.1.

Usage (same arguments as ``ray start``; the environment must hold ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``):

    python cluster/local_node.py start --block --address=127.0.0.1:GCS --node-ip-address=127.0.0.1 ...

Used by the multi-node test harness (``tests/cluster/multinode.py``); a real cluster needs none of this.
"""

from __future__ import annotations

import sys
import types


def _cluster_view(constants: types.ModuleType) -> types.ModuleType:
    """A module that reads through to ``constants`` except ``ENABLE_RAY_CLUSTER = True``."""
    view = types.ModuleType(constants.__name__ + "_local_node_view")
    view.__dict__.update({k: v for k, v in vars(constants).items() if not k.startswith("__")})
    view.ENABLE_RAY_CLUSTER = True
    return view


def main(argv: list[str] | None = None) -> None:
    import ray._private.ray_constants as ray_constants
    from ray.scripts import scripts

    if ray_constants.ENABLE_RAY_CLUSTER:
        sys.exit("local_node.py: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (keeps the node on 127.0.0.1)")
    scripts.ray_constants = _cluster_view(ray_constants)
    sys.argv = ["ray", *(sys.argv[1:] if argv is None else argv)]
    scripts.main()


if __name__ == "__main__":
    main()
