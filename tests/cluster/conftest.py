"""A real Ray head on 127.0.0.1 with token auth, started with ``ray start --head --block`` and stopped by PID.

Never ``ray stop``: it kills every Ray on the machine, including other people's test runs.
Every port is picked free (the defaults, e.g. the agent's 52365, are taken when another Ray runs here).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

BIN = Path(sys.executable).parent
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _dashboard_up(url: str, token: str) -> bool:
    req = urllib.request.Request(url + "/api/version", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def _kill_leftovers(marker: str) -> None:
    """SIGKILL, by PID, any process whose command line names our private temp dir."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and int(pid_dir.name) != os.getpid():
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def ray_head():
    """``{"address", "token_file", "env", "dir"}`` of a private token-auth Ray head (2 CPUs)."""
    # Short path: Ray's unix sockets live under the temp dir and must stay < 108 characters.
    d = Path(tempfile.mkdtemp(prefix="crh-", dir="/tmp"))
    token = secrets.token_hex(32)
    (d / "token").write_text(token)
    (d / "token").chmod(0o600)
    dash = free_port()
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS and k != "RAY_ADDRESS"}
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(d / "token"), "PATH": f"{BIN}:{env.get('PATH', '')}",
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    # The cluster's offline data, set on its node as an operator would (a job's working dir is a temp copy).
    from coloc_ray.io import shared_data_dir

    env["COLOC_DATA"] = str(shared_data_dir().resolve())
    ports = {f"--{k}": free_port() for k in ("port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                             "metrics-export-port", "runtime-env-agent-port",
                                             "ray-client-server-port", "node-manager-port", "object-manager-port")}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={d / 'ray'}", "--num-cpus=2",
           "--object-store-memory=200000000", "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items())]
    proc = subprocess.Popen(cmd, env=env, stdout=open(d / "head.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while not _dashboard_up(url, token):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("ray head did not come up:\n" + (d / "head.log").read_text()[-3000:])
            time.sleep(1)
        yield {"address": url, "token_file": str(d / "token"), "env": env, "dir": d}
    finally:
        proc.send_signal(signal.SIGTERM)  # ray start --block tears its own processes down on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        _kill_leftovers(str(d))
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 with an empty bucket (:class:`tests.cluster.multinode.S3Server`).

    ``s3_server.env`` (endpoint, dummy keys, region) is what a client needs; ``s3_server.uri("a", "b")``
    gives ``s3://<bucket>/a/b``; ``s3_server.keys(prefix)`` lists what is stored.
    """
    from tests.cluster.multinode import S3Server

    with S3Server() as s3:
        yield s3


@pytest.fixture(scope="module")
def multinode(s3_server, tmp_path_factory):
    """A real 3-node Ray cluster on 127.0.0.1 (:class:`tests.cluster.multinode.MultiNodeCluster`).

    Head with 0 CPUs; worker nodes ``w1``, ``w2`` with 1 CPU, 2 logical GPUs and the resource ``node_wK: 1``
    each; token auth; the S3 server's env on every node. The worker nodes cannot see this session's pytest
    temp dirs (``tmp_path`` of any test) nor the head's or each other's files. ``multinode.driver()``
    connects this process; ``multinode.env`` is a client's environment (e.g. for ``coloc submit``).
    One cluster per test module: a module that kills a node should do it last or ``add_worker()`` after.
    """
    from tests.cluster.multinode import MultiNodeCluster

    hide = [tmp_path_factory.getbasetemp()]
    with MultiNodeCluster(workers=2, cpus=1, gpus=2, hide=hide, env=s3_server.env) as cluster:
        yield cluster
