"""Two Ray instances on one machine (two studies): every process of ours knows its own cluster's address.

Ray Train's placement-group cleaner (an actor of Ray's) resolves the cluster with Ray's auto-detection; with a
second Ray on the machine that printed "Found multiple active Ray instances" and could pick the other cluster.
"""

from __future__ import annotations

import logging

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def _resolve_in_a_worker(drop_env: bool) -> dict:
    import io
    import os

    from ray._private import services

    if drop_env:
        os.environ.pop("RAY_ADDRESS", None)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    services.logger.addHandler(handler)
    try:
        addr = services.canonicalize_bootstrap_address_or_die(None)  # what the State API client calls
    except ConnectionError as e:
        addr = f"error: {e}"
    finally:
        services.logger.removeHandler(handler)
    return {"env": os.environ.get("RAY_ADDRESS"), "resolved": addr, "log": buf.getvalue()}


def test_workers_resolve_their_own_cluster_with_another_ray_running(ray_head, ray_local):
    ray = ray_local
    ours = ray.get_runtime_context().gcs_address
    task = ray.remote(num_cpus=0)(_resolve_in_a_worker)
    got = ray.get(task.remote(False))
    assert got["env"] == ours and got["resolved"] == ours and "multiple" not in got["log"], got
    # What the address protects against: the same lookup without it sees both clusters and guesses.
    guessed = ray.get(task.options(max_retries=0).remote(True))
    assert "Found multiple active Ray instances" in guessed["resolved"] + guessed["log"], guessed
