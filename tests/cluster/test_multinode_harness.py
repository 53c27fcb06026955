"""The multi-node test harness itself: 3 nodes on 127.0.0.1 with token auth that share no files.

What every multi-node study test relies on (``tests/cluster/multinode.py``, fixtures ``multinode`` and
``s3_server``): the nodes are really separate as far as files go, logical GPUs are handed out per task,
object storage works from a worker node, a killed node is seen dead within a bound, and nothing listens
beyond 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(400)]


def _on(ray, node: str, fn, *args, **opts):
    """Run ``fn(*args)`` as a task pinned to worker node ``node`` (its ``node_<name>`` resource)."""
    return ray.get(ray.remote(fn).options(resources={f"node_{node}": 0.01}, **opts).remote(*args), timeout=120)


def _probe_path(path: str) -> dict:
    import os

    return {"exists": os.path.exists(path), "pid": os.getpid()}


def _gpu_task() -> dict:
    import os

    import ray

    return {"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "ids": ray.get_runtime_context().get_accelerator_ids(),
            "node": ray.get_runtime_context().get_node_id()}


def _s3_round_trip(uri: str, payload: bytes) -> dict:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path) as f:
        got = f.read()
    with fs.open_output_stream(path + ".back") as f:
        f.write(got[::-1])
    return {"read": got, "fs": type(fs).__name__}


def test_three_nodes_alive_on_loopback_with_token_auth(multinode):
    nodes = multinode.alive_nodes()
    assert len(nodes) == 3
    assert {n["node_ip"] for n in nodes} == {"127.0.0.1"}
    heads = [n for n in nodes if n["is_head_node"]]
    assert len(heads) == 1 and heads[0]["resources_total"].get("CPU", 0) == 0
    for k in (1, 2):
        (w,) = [n for n in nodes if f"node_w{k}" in n["resources_total"]]
        assert w["resources_total"]["CPU"] == 1 and w["resources_total"]["GPU"] == 2
    # Token auth: the dashboard refuses a request without the token, a wrong token too.
    for headers in ({}, {"Authorization": "Bearer " + "0" * 64}):
        req = urllib.request.Request(multinode.dashboard_url + "/api/v0/nodes", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code in (401, 403)
    assert oct(multinode.token_file.stat().st_mode & 0o777) == "0o600"
    # Every listening socket of every cluster process is on 127.0.0.1: GCS, dashboard, raylets, agents.
    socks = multinode.assert_loopback_only()
    assert {multinode.gcs_port, multinode.dashboard_port} <= {s["port"] for s in multinode.sockets}  # at start
    ports = {s["port"] for s in socks}
    assert multinode.gcs_port in ports and multinode.dashboard_port in ports
    assert {s["node"] for s in socks} >= {"head", "w1", "w2"}
    # Independent view: the kernel's own table (ss) agrees for every port we found.
    ss = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    local = {ln.split()[3] for ln in ss.splitlines() if ln.strip()}
    for s in socks:
        assert any(addr.endswith(f":{s['port']}") and "127.0.0.1" in addr for addr in local), s


def test_a_driver_without_the_token_is_refused(multinode):
    env = {k: v for k, v in multinode.env.items() if not k.startswith("RAY_AUTH")}
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # give up after 2 tries instead of 20 (one per second)
    code = f"import ray; ray.init(address='{multinode.gcs_address}')"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode != 0
    assert "Authentication" in r.stderr or "token" in r.stderr, r.stderr[-2000:]


def test_worker_nodes_do_not_see_the_drivers_files(multinode, tmp_path):
    mine = tmp_path / "driver_only.txt"
    mine.write_text("driver")
    head_file = next(multinode.node_dir("head").iterdir())  # the head's own temp dir exists
    with multinode.driver() as ray:
        for node in ("w1", "w2"):
            assert not _on(ray, node, _probe_path, str(mine))["exists"]
            assert not _on(ray, node, _probe_path, str(head_file))["exists"]
            # the repo and the venv stay visible
            assert _on(ray, node, _probe_path, str(multinode.token_file))["exists"]
            assert _on(ray, node, _probe_path, __file__)["exists"]
        # each worker sees its own dir, not the other's
        for me, other in (("w1", "w2"), ("w2", "w1")):
            assert _on(ray, me, _probe_path, str(multinode.node_dir(me) / "node.log"))["exists"]
            assert not _on(ray, me, _probe_path, str(multinode.node_dir(other) / "node.log"))["exists"]
    assert mine.read_text() == "driver"  # and the driver still sees it


def test_tasks_on_a_worker_get_logical_gpus(multinode):
    with multinode.driver() as ray:
        f = ray.remote(_gpu_task)
        # Two 1-GPU tasks at once on w1 (2 GPUs): distinct ids, exported as CUDA_VISIBLE_DEVICES.
        refs = [f.options(num_gpus=1, num_cpus=0, resources={"node_w1": 0.01}).remote() for _ in range(2)]
        got = ray.get(refs, timeout=120)
        zero = _on(ray, "w2", _gpu_task, num_gpus=0, num_cpus=0)
    assert {g["node"] for g in got} == {multinode.node_id(1)}
    ids = sorted(g["ids"]["GPU"][0] for g in got)
    assert all(len(g["ids"]["GPU"]) == 1 for g in got)
    assert [g["cvd"] for g in sorted(got, key=lambda g: g["ids"]["GPU"][0])] == ids
    assert set(ids) <= {"0", "1"}
    # Ray 2.60 leaves CUDA_VISIBLE_DEVICES unset for a task that asked for no GPU (ENVIRONMENT.md).
    assert zero["ids"].get("GPU", []) == [] and zero["cvd"] is None


def test_s3_round_trip_from_a_worker_node(multinode, s3_server):
    import pyarrow.fs as pafs

    uri = s3_server.uri("harness", f"blob-{time.time_ns()}.bin")
    payload = b"written by the driver " + str(time.time()).encode()
    with multinode.client_env():
        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_output_stream(path) as f:
            f.write(payload)
        with multinode.driver() as ray:
            got = _on(ray, "w2", _s3_round_trip, uri, payload)
        with fs.open_input_stream(path + ".back") as f:
            back = f.read()
    assert got == {"read": payload, "fs": "S3FileSystem"}
    assert back == payload[::-1]
    assert path.split("/", 1)[1] + ".back" in s3_server.keys("harness/")  # boto3's own view of the bucket


def test_killed_worker_node_is_seen_dead_within_a_bound(multinode):
    """Last in the module: it leaves w1 dead (a replacement node is started so the fixture stays usable)."""
    pids = [p for p, n in multinode.pids().items() if n == "w1"]
    assert pids
    t0 = time.time()
    multinode.kill_node(1)
    waited = multinode.wait_node_dead(1, timeout=60)
    assert waited < 60
    assert not [p for p in pids if _alive(p)], "w1 left processes behind"
    alive = multinode.alive_nodes()
    assert len(alive) == 2 and not any("node_w1" in n["resources_total"] for n in alive)
    print(f"node w1 seen DEAD {time.time() - t0:.1f} s after SIGKILL")
    name = multinode.add_worker()
    assert len(multinode.alive_nodes()) == 3 and name == "w3"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
