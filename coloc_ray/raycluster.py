"""Start or join Ray, always on loopback (the only module that calls ``ray.init``).

Ray 2.60 binds to the machine's other interface unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set
in the head's and every driver's environment; token auth is on by default (``~/.ray/auth_token``).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def loopback_env() -> dict[str, str]:
    """Environment every Ray process of ours needs (set before ``import ray`` starts anything)."""
    for k, v in LOOPBACK_ENV.items():
        os.environ.setdefault(k, v)
    return dict(LOOPBACK_ENV)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to ``address`` (``ray://``, ``host:port`` or ``auto``) or start a local Ray on 127.0.0.1.

    Idempotent: an already-initialised Ray is kept.
    """
    loopback_env()
    import ray

    if ray.is_initialized():
        return
    _loopback_even_if_imported_early()
    # Worker processes must see the same loopback setting and keep torch to its share of the CPUs.
    runtime_env = {"env_vars": {**LOOPBACK_ENV, "TOKENIZERS_PARALLELISM": "false"}}
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    log.info("starting a local Ray on 127.0.0.1")
    ray.init(
        num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _node_ip_address="127.0.0.1",
        runtime_env=runtime_env, log_to_driver=True, configure_logging=False,
    )


def _loopback_even_if_imported_early() -> None:
    """Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when ``ray`` is first imported: a caller that
    imported ray before :func:`loopback_env` ran would start a node on the machine's other interface."""
    from ray._private import ray_constants

    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0" and ray_constants.ENABLE_RAY_CLUSTER:
        ray_constants.ENABLE_RAY_CLUSTER = False  # what the env var would have set at import time


def default_num_workers() -> int:
    """One worker per GPU when the cluster has GPUs, else one per CPU (at least 1)."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    return gpus if gpus > 0 else max(1, int(res.get("CPU", 1)))


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
