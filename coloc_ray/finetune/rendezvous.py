"""The fine-tune workers' process-group rendezvous, listening on the node's address only.

Ray Train's stock torch backend hands ``init_process_group`` a ``tcp://`` or ``env://`` URL; torch then starts
its ``TCPStore`` server on rank 0, and that server binds the wildcard address (every interface of the node, for the
whole fine-tune). torch takes no bind address, but it does take a listening socket (``master_listen_fd``): here
rank 0 binds a socket to its node's IP (the address Ray itself uses: 127.0.0.1 on a loopback cluster), the store
serves on it, and every rank joins the process group through that store. Everything else (backend choice, the
NCCL error-handling switch, the ranks' environment, shutdown) is Ray Train's own code.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import ray

# Ray Train's backend classes are not public API; subclassing its own torch backend keeps everything but the
# rendezvous Ray's code (the alternative, a copy of on_start, would drift from it).
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

_SERVED: dict = {}  # rank 0's store and its socket, kept alive for the fine-tune (one per worker process)


def _serve_store(world_size: int, timeout_s: float) -> tuple[str, int]:
    """On rank 0: a TCPStore server on a socket bound to this node's address; returns (address, port)."""
    import torch.distributed as dist

    addr = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((addr, 0))
    sock.listen(max(128, world_size))
    port = sock.getsockname()[1]
    store = dist.TCPStore(addr, port, world_size, True, timedelta(seconds=timeout_s), wait_for_workers=False,
                          master_listen_fd=sock.fileno())
    _SERVED.clear()
    _SERVED.update(store=store, sock=sock)
    return addr, port


def _join(backend: str, rank: int, world_size: int, addr: str, port: int, timeout_s: float) -> None:
    """Every rank: the process group over the rank-0 store (rank 0 uses the server object itself)."""
    import torch.distributed as dist
    from ray.train.torch.config import _is_backend_nccl

    if _is_backend_nccl(backend) and "TORCH_NCCL_BLOCKING_WAIT" not in os.environ:
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # as Ray Train does: fail on a timeout
    timeout = timedelta(seconds=timeout_s)
    store = _SERVED["store"] if rank == 0 else dist.TCPStore(addr, port, world_size, False, timeout)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


class _BoundBackend(_TorchBackend):
    """Ray Train's torch backend with :func:`_serve_store` / :func:`_join` in place of the URL rendezvous."""

    def on_start(self, worker_group, backend_config):
        import torch.distributed as dist

        if not dist.is_available():
            raise RuntimeError("Distributed torch is not available.")
        backend = backend_config.backend
        if backend is None:  # Ray Train's default choice
            backend = "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
        world = len(worker_group)
        addr, port = worker_group.execute_single(0, _serve_store, world, backend_config.timeout_s)
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(i, _join, backend, i, world, addr, port, backend_config.timeout_s)
                 for i in range(world)])


@dataclass
class BoundTorchConfig(TorchConfig):
    """A ``TorchConfig`` whose rendezvous listens on the node's address (see the module docstring)."""

    @property
    def backend_cls(self):
        return _BoundBackend
