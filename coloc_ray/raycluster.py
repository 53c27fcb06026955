"""Start or join Ray, always on loopback (the only module that calls ``ray.init``).

Ray 2.60 binds to the machine's other interface unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set
in the head's and every driver's environment; token auth is on by default (``~/.ray/auth_token``).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from pathlib import Path

log = logging.getLogger(__name__)

_GCS_PORT_VAR = "RAY_GCS_SERVER_PORT"  # read by a head that ray.init starts (ray._private.node)
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def loopback_env() -> dict[str, str]:
    """Environment every Ray process of ours needs (set before ``import ray`` starts anything)."""
    for k, v in LOOPBACK_ENV.items():
        os.environ.setdefault(k, v)
    return dict(LOOPBACK_ENV)


def ensure_private_token(path: str | Path) -> Path:
    """Make ``path`` a token file only its owner can read: create it (a fresh random token, mode 0600, in a 0700
    directory) when absent, else tighten a group/world-readable one to 0600. Ray 2.60 writes its default
    ``~/.ray/auth_token`` with the umask (0644); call this before the first ``ray.init`` / ``ray start``."""
    p = Path(path).expanduser()
    if not p.exists():
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
        except FileExistsError:
            return ensure_private_token(p)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    elif p.stat().st_mode & 0o077:
        p.chmod(0o600)
    return p


def _private_token_file(create: bool) -> None:
    """Token auth: the token file this process will use is created 0600, or tightened to it (Ray writes
    ``~/.ray/auth_token`` with the umask, 0644: readable by every user of the machine)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if not create and not Path(path).expanduser().exists():
        return  # joining a cluster: its token is the user's to provide
    try:
        ensure_private_token(path)
    except OSError as e:  # a read-only home, a token file of another user: Ray itself will say what it needs
        log.warning("could not make the Ray token file %s private: %s", path, e)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to ``address`` (``ray://``, ``host:port`` or ``auto``) or start a local Ray on 127.0.0.1.

    Idempotent: an already-initialised Ray is kept.
    """
    loopback_env()
    import ray

    if ray.is_initialized():
        return
    _loopback_even_if_imported_early()
    _private_token_file(create=not address)
    # Worker processes must see the same loopback setting and keep torch to its share of the CPUs.
    # MLflow 3.17's telemetry sets an environment variable from several threads: in a reused Tune actor that race
    # failed a trial's metric logging (bench_scale). Telemetry off in every process of a study.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    runtime_env = {"env_vars": {**LOOPBACK_ENV, "TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}}
    if address:
        log.info("connecting to Ray at %s", address)
        if address not in ("auto", "local") and "://" not in address:
            runtime_env["env_vars"]["RAY_ADDRESS"] = address  # as for a local start below: nobody guesses
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    log.info("starting a local Ray on 127.0.0.1")
    # Every process of the study gets its cluster's address (RAY_ADDRESS), so none of them guesses: Ray Train's
    # placement-group cleaner resolves "the" local cluster by auto-detection and, with a second Ray on the machine
    # (another study), printed "Found multiple active Ray instances" or picked the newest. ray.init takes no GCS
    # port for a local start, but the head reads RAY_GCS_SERVER_PORT, so the address is known before it starts.
    port = _free_loopback_port()
    runtime_env["env_vars"]["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    old = os.environ.get(_GCS_PORT_VAR)
    os.environ[_GCS_PORT_VAR] = str(port)
    try:
        ray.init(
            num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _node_ip_address="127.0.0.1",
            runtime_env=runtime_env, log_to_driver=True, configure_logging=False,
        )
    finally:
        if old is None:
            os.environ.pop(_GCS_PORT_VAR, None)
        else:
            os.environ[_GCS_PORT_VAR] = old



def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback_even_if_imported_early() -> None:
    """Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when ``ray`` is first imported: a caller that
    imported ray before :func:`loopback_env` ran would start a node on the machine's other interface.

    The environment variable is Ray's public switch, but only at import; no public API changes it afterwards,
    so this is the one place that sets ``ray._private.ray_constants`` (Ray is pinned; tests/cluster covers it).
    """
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
