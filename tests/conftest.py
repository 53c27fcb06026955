"""Shared fixtures: tiny models, a real local Ray (own auth token, loopback), a real MLflow server.

Everything a fixture starts, it stops (by PID for servers).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_token_env(tmp_path_factory):
    """A private Ray auth token for this test session (never the user's ~/.ray/auth_token)."""
    d = tmp_path_factory.mktemp("raytoken")
    tok = d / "auth_token"
    tok.write_text(secrets.token_hex(32))
    tok.chmod(0o600)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tok)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def _ray_session(ray_token_env):
    """Owns the local Ray's end: shut down once, at the end of the session."""
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session):
    """A real local Ray on 127.0.0.1 with 2 CPUs, shared by every module of the session.

    Checked per module: a multi-node test (tests/cluster/multinode.py ``driver``) makes this process the driver of
    its own cluster and shuts the local Ray down, so a later module starts it again, after making Ray re-read
    the session's token settings (it caches the auth mode and token of the cluster it last joined).
    """
    import ray

    from coloc_ray.raycluster import ensure_ray
    from tests.cluster.multinode import reload_ray_auth

    if not ray.is_initialized():
        reload_ray_auth()
        ensure_ray(num_cpus=2)
    yield ray


def run_mlflow_server(d: Path, artifacts: list[str], start_timeout_s: float = 240):
    """Generator: a real ``mlflow server`` on 127.0.0.1 with its SQLite store in ``d``; yields its URI, then stops
    it by process group. ``artifacts``: the server's artifact flags (a local root, or proxied artifacts). The start
    wait is long: on a loaded 2-core box (a CI run beside a demo) the server once took over 90 s to answer."""
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{d}/db.sqlite", *artifacts,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=open(d / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + start_timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
        if proc.poll() is not None:
            raise RuntimeError("mlflow server died:\n" + (d / "server.log").read_text()[-3000:])
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError(f"mlflow server not healthy in {start_timeout_s:.0f} s")
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite store), stopped by PID at the end."""
    d = tmp_path_factory.mktemp("mlflow")
    yield from run_mlflow_server(d, ["--default-artifact-root", str(d / "artifacts")])


@pytest.fixture()
def tiny():
    """(model, tokenizer) of the tiny random 4-layer GQA Llama (fresh copy per test)."""
    from coloc_ray.models import load_model

    lm = load_model("tiny-gqa")
    return lm


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M (fp32), loaded once per session."""
    from coloc_ray.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture()
def tracking_uri(tmp_path):
    """A private SQLite MLflow store for one test."""
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


def run_cli(*args: str, cwd=None, env=None, timeout=900) -> subprocess.CompletedProcess:
    """Run ``coloc ARGS`` as a subprocess (the real console script) and capture its output."""
    exe = Path(sys.executable).parent / "coloc"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(exe), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


# --- the process's exit -----------------------------------------------------------------------------------------
# One full run (CI=true .ci/run on a fresh clone, 606 tests, 54 min) printed its summary and then died in a native
# static destructor while the interpreter tore down (kernel log: "segfault ... in libstdc++.so.6"; exit 139, so
# make failed with every result already reported). The process loads Ray's core worker, torch, gloo, gRPC and
# Arrow, whose threads can outlive Python's shutdown. So the suite leaves by os._exit with pytest's own exit status,
# after every other hook (reports and cache written): a test failure still fails the run; a crash after the last
# result no longer turns a passing run into a failed one. COLOC_TEST_HARD_EXIT=0 restores the normal exit.
_SESSION: dict = {}


def pytest_sessionfinish(session, exitstatus):
    _SESSION["exitstatus"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if "exitstatus" in _SESSION and os.environ.get("COLOC_TEST_HARD_EXIT", "1") == "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_SESSION["exitstatus"])
