"""What a study needs from every node, checked before any work: storage, data and tracking reachable.

On one machine all three hold trivially. On a cluster whose nodes share no disk they are the first things to
break, and late: a trial finishes on a GPU node and writes its result where the driver never looks, or an
evaluation finds no benchmark files after the fine-tune. So the driver sends one tiny task to each alive node
that reads a marker the driver wrote to the study storage, writes one back, and looks for the data directory;
any node that cannot is named in a one-line error, with the fix, before a single trial starts.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from coloc_ray.errors import UserError

log = logging.getLogger(__name__)

CHECK_DIR = ".coloc-node-check"
FILE_SCHEMES = ("sqlite", "file", "")  # tracking stores that live on one machine's disk


def _node_probe(root: str, token: str, data_dir: str | None, model_path: str | None = None) -> dict:
    """Runs on one node: read the driver's marker, write this node's, look for the data and a local model."""
    import ray

    from coloc_ray.storage import Storage

    node = ray.get_runtime_context().get_node_id()
    out = {"node_id": node, "storage": None, "data": None}
    try:
        store = Storage(root)
        if store.read_text(f"{CHECK_DIR}/{token}") != token:
            out["storage"] = "sees another file at the study storage (not the driver's marker)"
        else:
            store.write_text(f"{CHECK_DIR}/{token}.{node}", node)
    except FileNotFoundError:
        out["storage"] = "does not see the driver's marker file (the path is not shared with it)"
    except Exception as e:  # noqa: BLE001 - any failure is this node's answer, reported by name
        out["storage"] = f"cannot use it ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    if data_dir is not None and not Path(data_dir).is_dir():
        out["data"] = f"has no data directory {data_dir}"
    if model_path is not None and not Path(model_path).exists():
        out["model"] = f"has no model at {model_path}"
    return out


def tracking_error(uri: str, num_nodes: int) -> str | None:
    """A tracking store on the driver's disk cannot be reached from other nodes: the fix, or None."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if num_nodes > 1 and scheme in FILE_SCHEMES:
        return (f"tracking_uri = {uri!r} is a file on the driver's machine, which the other {num_nodes - 1} node(s) "
                "cannot reach: run an MLflow server (`mlflow server --host <addr> --port 5000 "
                "--backend-store-uri ...`) and set tracking_uri: http://<addr>:5000")
    return None


def needs_offline_data(cfg) -> bool:
    """Whether the study reads ``$COLOC_DATA``: offline benchmarks, offline training data or default probe texts."""
    training = cfg.training.data.source == "offline"
    probes = not cfg.probes.skip and cfg.probes.eval_data is None
    return cfg.evaluation.source == "offline" or training or probes


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_cluster(cfg, store, timeout_s: float = 120.0) -> str | None:
    """Check storage, data and tracking on every alive node; returns the data directory handed to trials.

    Raises:
        UserError: one line per problem, each naming the node and the fix.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from coloc_ray.io import shared_data_dir

    nodes = alive_nodes()
    errs = []
    terr = tracking_error(cfg.tracking_uri or "", len(nodes))
    if terr:
        errs.append(terr)
    data = shared_data_dir()
    data_dir = str(data.resolve()) if data.is_dir() else None
    if data_dir is None and needs_offline_data(cfg):
        errs.append(f"the offline data directory {data} does not exist here: set COLOC_DATA to the folder holding "
                    "the benchmark and training files (on every node), or use source: hub for evaluation, training "
                    "data and probes.eval_data")
    if len(nodes) == 1 and store.is_local:
        if errs:
            raise UserError("\n".join(errs))
        return data_dir
    token = secrets.token_hex(8)
    store.write_text(f"{CHECK_DIR}/{token}", token)
    probe = ray.remote(num_cpus=0, max_retries=0)(_node_probe)
    model = Path(cfg.model).expanduser()
    model_path = str(model.resolve()) if model.exists() else None  # a local model path: every node needs it
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(store.root, token, data_dir, model_path) for n in nodes]
    ips = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes}
    try:
        ready, not_ready = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for r in ready:
            try:
                got = ray.get(r)
            except Exception as e:  # noqa: BLE001 - a node that died under the check
                errs.append(f"a node failed the storage check ({type(e).__name__})")
                continue
            where = f"node {got['node_id'][:8]} ({ips.get(got['node_id'])})"
            if got["storage"]:
                errs.append(f"{where} {got['storage']}: output_dir {store.root} must be a path every node "
                            "mounts, or an object-store URI (s3://bucket/prefix) with credentials on every node")
            if got["data"]:
                errs.append(f"{where} {got['data']}: put the data on a volume every node mounts at the same "
                            "path and set COLOC_DATA to it")
            if got.get("model"):
                errs.append(f"{where} {got['model']}: put the model on a volume every node mounts at the same "
                            "path, or give a hub id (cached on every node, e.g. a shared HF_HOME)")
        if not_ready:
            errs.append(f"{len(not_ready)} node(s) did not answer the storage/data check within {timeout_s:.0f} s")
    finally:
        try:
            store.delete(CHECK_DIR)
        except OSError:
            log.warning("could not remove %s", store.uri(CHECK_DIR))
    if errs:
        raise UserError("\n".join(errs))
    log.info("cluster check: %d node(s) reach %s%s", len(nodes), store.root,
             f" and the data at {data_dir}" if data_dir else "")
    if data_dir:
        os.environ["COLOC_DATA"] = data_dir
    return data_dir
