"""A real multi-node Ray 2.60 cluster on 127.0.0.1 for tests: a head and N worker nodes that share no files.

- Head: ``ray start --head --block --num-cpus=0``; workers: ``cluster/local_node.py start --block`` (the
  ``ray start`` CLI with its single-machine join check lifted; every process stays on 127.0.0.1).
- Token auth: a private token file (0600); ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` in every
  process's environment (``cluster.env`` is what a client needs).
- Every port is explicit and picked free, workers' ports come from the OS: two clusters never collide.
- Each worker node runs in its own mount namespace (``unshare -m --propagation private``) in which the head's
  directory, the other workers' directories and the ``hide`` directories are covered by an empty folder of
  its own (``mount --bind``): a worker sees neither the driver's files nor the other nodes', and what it
  writes to such a path stays on "its disk", as on separate machines. The venv and the repo stay visible.
- Every node is started with ``setsid`` and stopped by its process group (never by name);
  :meth:`MultiNodeCluster.kill_node` SIGKILLs one worker node's whole group (a lost machine).

    with MultiNodeCluster(workers=2, cpus=1, gpus=2, hide=[study_dir]) as c:
        with c.driver():                       # ray.init(address=c.gcs_address) with the token
            ray.get(f.options(resources={"node_w1": 0.01}).remote())
        c.kill_node(1); c.wait_node_dead(1)

Health checks are faster than Ray's defaults (``health_check_ms`` x ``health_check_failures``, default
1 s x 5) so that a killed node is declared dead within seconds, as Ray's own tests configure it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LAUNCHER = REPO / "cluster" / "local_node.py"
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")
START_RETRIES = 2
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1")  # the second: a dual-stack socket bound to 127.0.0.1
NODE_PORTS = ("node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """One ``ray start --block`` process (the leader of its own process group) and its private directory."""

    name: str            # "head", "w1", "w2", ...
    dir: Path
    proc: subprocess.Popen
    resources: dict = field(default_factory=dict)
    killed: bool = False  # by kill_node: its exit is expected
    tries: int = 0        # start-up retries so far
    spec: tuple = ()      # (cpus, gpus) it was started with

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session: the process leads its own session and group

    def alive(self) -> bool:
        return self.proc.poll() is None


class _Started:
    """A context manager over ``start()`` / ``stop()``: a failed start still stops what it started."""

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class MultiNodeCluster(_Started):
    """Head (0 CPUs) + ``workers`` worker nodes on 127.0.0.1; a context manager that always stops them.

    Args:
        workers: number of worker nodes (``w1`` .. ``wN``), each with the custom resource ``node_wK: 1``.
        cpus, gpus: logical CPUs and GPUs of each worker node (Ray sets ``CUDA_VISIBLE_DEVICES`` per task).
        resources: extra custom resources of every worker node.
        hide: directories no worker node may see (created if missing); must not hold the repo or the venv.
        env: extra environment for every node (e.g. the S3 endpoint); clients get it in :attr:`env` too.
        head_cpus: logical CPUs of the head (0: no trial or task ever runs there).
        health_check_ms, health_check_failures: GCS health checks of the nodes (dead after about their product).
        start_timeout: bound on the start-up of the head and of all nodes joining.
    """

    def __init__(self, workers: int = 2, *, cpus: float = 1, gpus: int = 0, resources: dict | None = None,
                 hide=(), env: dict | None = None, head_cpus: float = 0, object_store_mb: int = 80,
                 health_check_ms: int = 1000, health_check_failures: int = 5, start_timeout: float = 300):
        self.n_workers, self.cpus, self.gpus = workers, cpus, gpus
        self.resources = dict(resources or {})
        self.hide = [Path(h).resolve() for h in hide]
        for h in self.hide:
            for keep in (REPO, Path(sys.prefix).resolve()):
                if keep == h or keep.is_relative_to(h):
                    raise ValueError(f"hide={h} would hide {keep} from the worker nodes; they need it")
        self.head_cpus, self.object_store_mb, self.start_timeout = head_cpus, object_store_mb, start_timeout
        # Short root: Ray's unix sockets live under the temp dirs and must stay < 108 characters.
        self.root = Path(tempfile.mkdtemp(prefix="cmn-", dir="/tmp"))
        self.token_file = self.root / "token"
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.gcs_address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        base = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
        pypath = os.pathsep.join(p for p in (str(REPO), base.get("PYTHONPATH", "")) if p)
        self.env = {**base, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file),
                    "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}", "PYTHONPATH": pypath,
                    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
        self._node_env = {**self.env, "RAY_health_check_period_ms": str(health_check_ms),
                          "RAY_health_check_timeout_ms": str(max(health_check_ms, 1000)),
                          "RAY_health_check_failure_threshold": str(health_check_failures),
                          "RAY_health_check_initial_delay_ms": "0"}
        self.nodes: dict[str, Node] = {}
        self.sockets: list[dict] = []  # listening sockets recorded by start() (all on 127.0.0.1)
        self._next_worker = 1

    # ---- start / stop -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the head, then every worker node, and wait (bounded) until all are ALIVE."""
        deadline = time.time() + self.start_timeout
        self._start_head()
        # Workers start as soon as the GCS listens (they join while the head's dashboard still starts).
        for ready in (self._gcs_up, self._dashboard_up):
            while not ready():
                if not self.nodes["head"].alive() or time.time() > deadline:
                    raise RuntimeError("ray head did not come up:\n" + self.log("head")[-3000:])
                time.sleep(0.3)
            if ready == self._gcs_up:
                for _ in range(self.n_workers):
                    self.add_worker(wait=False)
        self.wait_nodes(1 + self.n_workers, timeout=max(10.0, deadline - time.time()))
        self.sockets = self.assert_loopback_only()  # what listened once every node was up

    def _gcs_up(self) -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", self.gcs_port)) == 0

    def _start_head(self) -> None:
        d = self.node_dir("head")
        d.mkdir(parents=True)
        ports = {**{p: free_port() for p in NODE_PORTS}, "ray-client-server-port": free_port()}
        cmd = [str(BIN / "ray"), "start", "--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", f"--num-cpus={self.head_cpus}", "--num-gpus=0",
               *self._common_args(d, ports)]
        self.nodes["head"] = Node("head", d, self._popen(cmd, d))

    def add_worker(self, *, wait: bool = True, cpus: float | None = None, gpus: int | None = None) -> str:
        """Start one more worker node (``wK``, next K); returns its name. ``wait``: until it is ALIVE."""
        name = f"w{self._next_worker}"
        self._next_worker += 1
        self._launch_worker(name, self.cpus if cpus is None else cpus, self.gpus if gpus is None else gpus)
        if wait:
            self.wait_nodes(len(self.alive_nodes()) + 1, timeout=self.start_timeout)
        return name

    def _launch_worker(self, name: str, cpus: float, gpus: int, tries: int = 0) -> None:
        d = self.node_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        res = {**self.resources, f"node_{name}": 1}
        ports = {p: free_port() for p in NODE_PORTS}
        ray_cmd = [sys.executable, str(LAUNCHER), "start", f"--address={self.gcs_address}", f"--num-cpus={cpus}",
                   f"--num-gpus={gpus}", f"--resources={json.dumps(res)}", *self._common_args(d, ports)]
        node = Node(name, d, self._popen(self._private_mounts(name, d) + ray_cmd, d), res)
        node.spec, node.tries = (cpus, gpus), tries
        self.nodes[name] = node

    def _relaunch_failed_workers(self) -> list[str]:
        """Start again a worker whose ``ray start`` gave up (Ray allows a raylet only 30 s to register with
        the GCS, which a loaded machine can exceed); at most ``START_RETRIES`` times. Returns those given up."""
        failed = []
        for name, node in list(self.nodes.items()):
            if name == "head" or node.alive() or node.killed:
                continue
            if node.tries >= START_RETRIES:
                failed.append(name)
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pgid, signal.SIGKILL)  # a raylet left behind by the failed start
            self._kill(p for p, n in self.pids().items() if n == name)
            os.replace(node.dir / "node.log", node.dir / f"node.log.failed{node.tries}")
            shutil.rmtree(node.dir / "ray", ignore_errors=True)
            self._launch_worker(name, *node.spec, tries=node.tries + 1)
        return failed

    def _common_args(self, d: Path, ports: dict) -> list[str]:
        return ["--block", "--node-ip-address=127.0.0.1", f"--temp-dir={d / 'ray'}", "--disable-usage-stats",
                f"--object-store-memory={self.object_store_mb * 1024 * 1024}", "--min-worker-port=0",
                "--max-worker-port=0", *(f"--{k}={v}" for k, v in ports.items())]

    def _private_mounts(self, name: str, d: Path) -> list[str]:
        """``unshare`` prefix: this node's own mount namespace with the others' dirs and ``hide`` covered.

        ``hide`` dirs: an empty dir of this node's own is bound over each (its "disk" at that path). Node
        dirs: ``<root>/nodes`` is replaced by a view holding only this node's dir (bound in first, then the
        view mounted recursively), so nodes started later are not visible either.
        """
        q = lambda p: shlex.quote(str(p))  # noqa: E731
        mounts = []
        for i, path in enumerate(self.hide):
            path.mkdir(parents=True, exist_ok=True)
            empty = d / "covered" / str(i)
            empty.mkdir(parents=True, exist_ok=True)
            mounts.append(f"mount --bind {q(empty)} {q(path)}")
        view = self.root / "views" / name
        (view / name).mkdir(parents=True, exist_ok=True)
        mounts += [f"mount --bind {q(d)} {q(view / name)}", f"mount --rbind {q(view)} {q(self.root / 'nodes')}"]
        script = " && ".join(mounts + ['exec "$@"'])
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]

    def _popen(self, cmd: list[str], d: Path) -> subprocess.Popen:
        with open(d / "node.log", "w") as log:
            return subprocess.Popen(cmd, env=self._node_env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=d, start_new_session=True)

    def kill_node(self, k: int | str) -> None:
        """SIGKILL worker node ``k`` (``1`` or ``"w1"``): its whole process group, as if the machine died."""
        name = k if isinstance(k, str) else f"w{k}"
        node = self.nodes[name]
        node.killed = True
        # Ray's worker processes call setsid themselves: kill the node's whole tree, not only its group.
        tree = [pid for pid, n in self.pids().items() if n == name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pgid, signal.SIGKILL)
        self._kill(tree)
        node.proc.wait(timeout=30)

    def freeze_node(self, k: int | str, frozen: bool = True) -> None:
        """SIGSTOP (``frozen``) or SIGCONT every process of worker node ``k``: while frozen nothing on it advances,
        so a test can look at what runs there and then kill it in that state."""
        name = k if isinstance(k, str) else f"w{k}"
        sig = signal.SIGSTOP if frozen else signal.SIGCONT
        for pid, n in self.pids().items():
            if n == name:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    @staticmethod
    def _kill(pids) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop every node (workers first), by process group; then what is left of their process trees."""
        tree = list(self.pids()) if self.nodes else []  # Ray workers setsid: not in the nodes' groups
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            node = self.nodes[name]
            if node.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pgid, signal.SIGTERM)  # ray start --block tears its processes down
        grace = time.time() + 5  # a test cluster's state is thrown away: no need for a slow clean shutdown
        for node in self.nodes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=max(0.1, grace - time.time()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=10)
        self._kill(tree + self._pids_naming_root())
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- state --------------------------------------------------------------------------------------
    def node_dir(self, name: str) -> Path:
        """The private directory of node ``name`` (its Ray temp dir is ``ray/`` inside, its log ``node.log``)."""
        return self.root / "nodes" / name

    def log(self, name: str) -> str:
        p = self.node_dir(name) / "node.log"
        return p.read_text(errors="replace") if p.is_file() else ""

    def api(self, path: str, timeout: float = 5) -> dict:
        """GET ``path`` from the dashboard (e.g. ``/api/v0/actors?detail=true``) with the token; parsed JSON."""
        return self._get(path, timeout)

    def _get(self, path: str, timeout: float = 5) -> dict:
        req = urllib.request.Request(self.dashboard_url + path,
                                     headers={"Authorization": f"Bearer {self.token_file.read_text().strip()}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def _dashboard_up(self) -> bool:
        try:
            self._get("/api/version", timeout=2)
            return True
        except (OSError, ValueError, urllib.error.HTTPError):
            return False

    def nodes_state(self) -> list[dict]:
        """Every node the GCS knows (dashboard state API): ``node_id``, ``state``, ``node_ip``, ``resources_total``."""
        data = self._get("/api/v0/nodes?limit=1000&detail=true", timeout=10)
        return data["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        try:
            return [n for n in self.nodes_state() if n["state"] == "ALIVE"]
        except (OSError, ValueError, KeyError, urllib.error.HTTPError):
            return []

    def node_id(self, k: int | str) -> str | None:
        """The Ray node id of worker ``k`` (by its ``node_wK`` resource), alive or dead (latest)."""
        key = f"node_{k if isinstance(k, str) else f'w{k}'}"
        ids = [n["node_id"] for n in self.nodes_state() if key in (n.get("resources_total") or {})]
        return ids[-1] if ids else None

    def wait_nodes(self, n: int, timeout: float = 120) -> list[dict]:
        """Wait until ``n`` nodes are ALIVE; RuntimeError (with the nodes' logs) after ``timeout`` s."""
        deadline = time.time() + timeout
        while True:
            alive = self.alive_nodes()
            if len(alive) >= n:
                return alive
            dead = self._relaunch_failed_workers() + [h for h in ("head",) if not self.nodes[h].alive()]
            if dead or time.time() > deadline:
                logs = "\n".join(f"--- {m}:\n{self.log(m)[-1500:]}" for m in self.nodes)
                raise RuntimeError(f"{len(alive)}/{n} Ray nodes alive after {timeout:.0f} s "
                                   f"(exited: {dead or 'none'})\n{logs}")
            time.sleep(0.5)

    def wait_node_dead(self, k: int | str, timeout: float = 60) -> float:
        """Seconds until the GCS marks worker ``k`` DEAD; RuntimeError after ``timeout`` s."""
        t0 = time.time()
        key = f"node_{k if isinstance(k, str) else f'w{k}'}"
        while time.time() - t0 < timeout:
            with contextlib.suppress(OSError, ValueError, KeyError, urllib.error.HTTPError):
                mine = [n for n in self.nodes_state() if key in (n.get("resources_total") or {})]
                if mine and all(n["state"] == "DEAD" for n in mine):
                    return time.time() - t0
            time.sleep(0.25)
        raise RuntimeError(f"node {key} not seen DEAD within {timeout} s")

    # ---- processes and sockets ----------------------------------------------------------------------
    def _pids_naming_root(self) -> list[int]:
        me, out = os.getpid(), []
        marker = str(self.root).encode()
        for pid_dir in Path("/proc").iterdir():
            if pid_dir.name.isdigit() and int(pid_dir.name) != me:
                with contextlib.suppress(OSError):
                    if marker in (pid_dir / "cmdline").read_bytes():
                        out.append(int(pid_dir.name))
        return out

    def pids(self) -> dict[int, str]:
        """``{pid: node name}`` of every live process of this cluster (the nodes' trees and process groups)."""
        import psutil

        out: dict[int, str] = {}
        for name, node in self.nodes.items():
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(node.proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    out[p.pid] = name
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                pg = os.getpgid(p.pid)
                for name, node in self.nodes.items():
                    if pg == node.pgid and node.alive():
                        out.setdefault(p.pid, name)
        for pid in self._pids_naming_root():
            out.setdefault(pid, "?")
        return out

    def listening_sockets(self) -> list[dict]:
        """Every TCP socket a process of this cluster listens on: ``{pid, node, process, ip, port}``."""
        import psutil

        pids = self.pids()
        out = []
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.pid in pids:
                with contextlib.suppress(psutil.Error):
                    out.append({"pid": c.pid, "node": pids[c.pid], "process": psutil.Process(c.pid).name(),
                                "ip": c.laddr.ip, "port": c.laddr.port})
        return out

    def assert_loopback_only(self) -> list[dict]:
        """The listening sockets, after asserting every one of them is on 127.0.0.1 (and there are some)."""
        socks = self.listening_sockets()
        assert socks, "no listening socket found for the cluster's processes"
        wide = [s for s in socks if s["ip"] not in LOOPBACK]
        assert not wide, f"cluster processes listening beyond 127.0.0.1: {wide}"
        return socks

    # ---- drivers ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def client_env(self):
        """``os.environ`` set as a client of this cluster needs it (token, loopback, extra env); restored after.

        Ray caches the auth mode and token on first use: both are re-read on entry and again on exit.
        """
        keys = set(self.env) | set(AUTH_VARS)
        old = {k: os.environ.get(k) for k in keys}
        os.environ.update(self.env)
        for k in AUTH_VARS:
            if k not in self.env:
                os.environ.pop(k, None)
        reload_ray_auth()
        try:
            yield self.env
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            reload_ray_auth()

    @contextlib.contextmanager
    def driver(self, **init_kwargs):
        """This process as a Ray driver of the cluster (``ray.init(address=gcs)``); ``ray.shutdown()`` after."""
        import ray
        from ray._private import ray_constants

        if ray.is_initialized():
            # The suite's session-wide local Ray (tests/conftest.py ``ray_local``) may be up: one process can be
            # the driver of one cluster at a time. Stop it; later tests start it again through ensure_ray.
            ray.shutdown()
        # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import; with it on, ray.init rewrites 127.0.0.1 in
        # the address to the machine's other interface (as coloc_ray.raycluster also guards against).
        ray_constants.ENABLE_RAY_CLUSTER = False
        with self.client_env():
            ray.init(address=self.gcs_address, log_to_driver=False, **init_kwargs)
            try:
                yield ray
            finally:
                ray.shutdown()


def reload_ray_auth() -> None:
    """Make this process re-read RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH (Ray caches both on first use)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


class S3Server(_Started):
    """moto's S3-compatible server on 127.0.0.1 with one bucket; a context manager (stopped by process group).

    :attr:`env` is what a client needs: ``AWS_ENDPOINT_URL`` (read by boto3 and, since Arrow 15, by
    ``pyarrow.fs.S3FileSystem``, hence by Ray Train/Tune storage), dummy keys and a region.
    """

    def __init__(self, bucket: str = "coloc-test", start_timeout: float = 60):
        self.bucket, self.start_timeout = bucket, start_timeout
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true"}  # never ask a cloud metadata service
        self.proc: subprocess.Popen | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="cs3-", dir="/tmp"))

    def uri(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>``."""
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])

    def start(self) -> None:
        with open(self.dir / "moto.log", "w") as log:
            self.proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.time() + self.start_timeout
        while True:
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2):
                    break
            except (OSError, urllib.error.HTTPError):
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto_server did not come up:\n"
                                       + (self.dir / "moto.log").read_text()[-2000:])
                time.sleep(0.3)
        self.client().create_bucket(Bucket=self.bucket)

    def client(self):
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.env["AWS_DEFAULT_REGION"],
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
