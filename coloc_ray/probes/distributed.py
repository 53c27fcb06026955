"""The probes on Ray remote tasks (the only probe module that imports ray).

Sensitivity: the pairs are split into shards; RoPE influence: the probed layers are split into shards,
balanced by their cost (a cached layer l recomputes L - l blocks plus the head). Each task loads the model
itself from its spec or local directory, caps torch to its CPU share, and returns per-layer numbers that
the driver combines. Results do not depend on the number of workers beyond float rounding.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

log = logging.getLogger(__name__)

HEAD_COST_BLOCKS = 4  # the LM head over the vocabulary costs about 4 blocks on SmolLM2 (T = 512)


def _task_setup(threads: int):
    """Inside a task: cap torch threads to the task's CPU share and show INFO progress logs."""
    import torch

    torch.set_num_threads(max(1, threads))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _load(model_ref: str):
    from coloc_ray.models import load_model

    return load_model(model_ref)


def sensitivity_task(model_ref: str, pairs: list[dict], pooling: str, sink_multiple: float, threads: int) -> dict:
    """One shard of pairs -> ``{pair_id: [L deltas]}``."""
    from coloc_ray.probes.pairs import MinimalPair
    from coloc_ray.probes.sensitivity import pair_deltas

    _task_setup(threads)
    lm = _load(model_ref)
    return pair_deltas(lm.model, lm.tokenizer, [MinimalPair(**p) for p in pairs], pooling, sink_multiple)


def rope_task(model_ref: str, texts: list[str], factors: list[float], layers: list[int], naive: bool,
              max_len: int, threads: int) -> dict:
    """One shard of layers -> ``rope_layer_losses`` output for those layers."""
    from coloc_ray.probes.rope_influence import rope_layer_losses

    _task_setup(threads)
    lm = _load(model_ref)
    return rope_layer_losses(lm.model, lm.tokenizer, texts, factors, layers, naive=naive, max_len=max_len)


def split_even(items: Sequence, n: int) -> list[list]:
    """``n`` contiguous shards of near-equal size (no empty shard)."""
    n = max(1, min(n, len(items)))
    q, r = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        size = q + (1 if i < r else 0)
        out.append(list(items[start:start + size]))
        start += size
    return out


def split_layers_by_cost(layers: Sequence[int], n: int, num_layers: int, naive: bool) -> list[list[int]]:
    """Greedy longest-first split of layers into ``n`` shards of near-equal recompute cost."""
    n = max(1, min(n, len(layers)))
    cost = (lambda l: 1) if naive else (lambda l: num_layers - l + HEAD_COST_BLOCKS)
    shards: list[list[int]] = [[] for _ in range(n)]
    loads = [0] * n
    for l in sorted(layers, key=lambda l: (-cost(l), l)):
        i = loads.index(min(loads))
        shards[i].append(l)
        loads[i] += cost(l)
    return [sorted(s) for s in shards]


def _resources(num_workers: int) -> tuple[float, float, int]:
    """(num_cpus, num_gpus, torch threads) per task: an equal share of the cluster."""
    import ray

    res = ray.cluster_resources()
    cpus = max(1, int(res.get("CPU", 1)) // num_workers)
    gpus = float(res.get("GPU", 0))
    gpu_share = 0.0 if gpus <= 0 else min(1.0, gpus / num_workers)
    return cpus, gpu_share, cpus


def run_shards(task: Callable, shard_args: list[tuple], num_workers: int, address: str | None,
               describe: Callable[[int], str]) -> list:
    """Run ``task(*args, threads)`` for each shard on Ray; log each finished shard; results in shard order.

    Starts (and afterwards shuts down) a local Ray, or connects to ``address``, unless Ray is already up.
    """
    import ray

    from coloc_ray.raycluster import ensure_ray

    started = not ray.is_initialized()
    ensure_ray(address=address)
    try:
        cpus, gpus, threads = _resources(num_workers)
        remote = ray.remote(task).options(num_cpus=cpus, num_gpus=gpus)
        refs = [remote.remote(*args, threads) for args in shard_args]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        pending, t0 = list(refs), time.time()
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = index[done[0]]
            results[i] = ray.get(done[0])
            log.info("shard %d/%d done (%s), %.1f s", len(refs) - len(pending), len(refs), describe(i),
                     time.time() - t0)
        return results
    finally:
        if started:
            ray.shutdown()


def sensitivity_on_ray(model_ref: str, pairs: list, pooling: str, sink_multiple: float, num_workers: int,
                       address: str | None = None) -> dict[str, list[float]]:
    """Per-pair deltas computed over ``num_workers`` Ray tasks (shards of pairs)."""
    shards = split_even([p.to_dict() for p in pairs], num_workers)
    args = [(model_ref, s, pooling, sink_multiple) for s in shards]
    parts = run_shards(sensitivity_task, args, len(shards), address, lambda i: f"{len(shards[i])} pairs")
    out: dict[str, list[float]] = {}
    for part in parts:
        out.update(part)
    return out


def rope_on_ray(model_ref: str, texts: list[str], factors: list[float], layers: list[int], naive: bool,
                max_len: int, num_layers: int, num_workers: int, address: str | None = None) -> dict:
    """``rope_layer_losses`` over ``num_workers`` Ray tasks (shards of layers), combined in the driver."""
    shards = split_layers_by_cost(layers, num_workers, num_layers, naive)
    args = [(model_ref, texts, list(factors), s, naive, max_len) for s in shards]
    parts = run_shards(rope_task, args, len(shards), address, lambda i: f"layers {shards[i]}")
    base = [p["base_loss"] for p in parts]
    if max(base) - min(base) > 1e-6 * max(1.0, abs(base[0])):
        log.warning("rope probe: workers disagree on the base loss (%s); using the first", base)
    losses = {f: {} for f in factors}
    for part in parts:
        for f in factors:
            losses[f].update(part["losses"][f])
    return {"base_loss": base[0], "losses": losses, "num_tokens": parts[0]["num_tokens"]}
