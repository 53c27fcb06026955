"""Every local Ray we start listens on 127.0.0.1, even when the caller imported ray before coloc_ray.

Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at ``import ray``; a script that imports ray first (as
``bench/bench_scheduling.py`` once did) used to start its node on the machine's other interface.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, ray                       # ray first, before the loopback environment is set
from coloc_ray.raycluster import ensure_ray, shutdown_ray
ensure_ray(num_cpus=1)
out = {"node_ip": ray.util.get_node_ip_address(), "gcs": ray.get_runtime_context().gcs_address}
shutdown_ray()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.timeout(240)
def test_local_ray_binds_loopback_even_if_ray_was_imported_first(ray_token_env):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    got = json.loads(line[len("RESULT "):])
    assert got["node_ip"] == "127.0.0.1"
    assert got["gcs"].startswith("127.0.0.1:"), got


def test_local_ray_token_file_is_private(tmp_path, monkeypatch):
    """ensure_ray makes the token file it will use 0600 (Ray's own default file is 0644), before ray.init."""
    from coloc_ray import raycluster

    loose = tmp_path / "auth_token"
    loose.write_text("0" * 64)
    loose.chmod(0o644)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(loose))
    raycluster._private_token_file(create=True)
    assert loose.stat().st_mode & 0o777 == 0o600 and loose.read_text() == "0" * 64
    fresh = tmp_path / "new" / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(fresh))
    raycluster._private_token_file(create=False)  # joining a cluster: never invent its token
    assert not fresh.exists()
    raycluster._private_token_file(create=True)
    assert fresh.stat().st_mode & 0o777 == 0o600 and len(fresh.read_text()) == 64
