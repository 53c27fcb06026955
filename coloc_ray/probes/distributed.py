"""The probes on Ray remote tasks (the only probe module that imports ray).

Sensitivity: the pairs are split into shards; RoPE influence: the probed layers are split into shards,
balanced by their cost (a cached layer l recomputes L - l blocks plus the head). Each task loads the model
itself from its spec or local directory, caps torch to its CPU share, and returns per-layer numbers that
the driver combines. Results do not depend on the number of workers beyond float rounding. Given a
``models.ModelRef``, each task loads it with ``load_model(ref)``: a node whose weights differ from the ones the
driver resolved refuses (UserError) instead of probing another model.
"""

from __future__ import annotations

import contextlib
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


def _load(model_ref):  # a spec string or a models.ModelRef
    from coloc_ray.models import load_model

    return load_model(model_ref)


def sensitivity_task(model_ref, pairs: list[dict], pooling: str, sink_multiple: float, threads: int) -> dict:
    """One shard of pairs -> ``{"per_pair": {pair_id: [L deltas]}, "embedding": {pair_id: delta_emb}}``."""
    from coloc_ray.probes.pairs import MinimalPair
    from coloc_ray.probes.sensitivity import probe_pairs

    _task_setup(threads)
    lm = _load(model_ref)
    return probe_pairs(lm.model, lm.tokenizer, [MinimalPair(**p) for p in pairs], pooling, sink_multiple)


def rope_task(model_ref, texts: list[str], factors: list[float], layers: list[int], naive: bool,
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


@contextlib.contextmanager
def ray_session(address: str | None):
    """Start a local Ray (or connect to ``address``) unless Ray is up; shut down only what this started."""
    import ray

    from coloc_ray.raycluster import ensure_ray

    started = not ray.is_initialized()
    ensure_ray(address=address)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _workers(num_workers: int | None) -> int:
    from coloc_ray.raycluster import default_num_workers

    return num_workers if num_workers else default_num_workers()


def run_shards(task: Callable, shard_args: list[tuple], describe: Callable[[int], str]) -> list:
    """Run ``task(*args, threads)`` per shard as Ray tasks (Ray must be up); log each finished shard.

    Returns the results in shard order.
    """
    import ray

    cpus, gpus, threads = _resources(len(shard_args))
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


def sensitivity_on_ray(model_ref, pairs: list, pooling: str, sink_multiple: float, num_workers: int | None,
                       address: str | None = None) -> tuple[dict, int]:
    """Per-pair deltas over ``num_workers`` Ray tasks (shards of pairs; None = one per CPU/GPU).

    Returns ``({"per_pair": {id: [L]}, "embedding": {id: float}}, number of workers used)``.
    """
    with ray_session(address):
        n = _workers(num_workers)
        shards = split_even([p.to_dict() for p in pairs], n)
        args = [(model_ref, s, pooling, sink_multiple) for s in shards]
        parts = run_shards(sensitivity_task, args, lambda i: f"{len(shards[i])} pairs")
    out: dict = {"per_pair": {}, "embedding": {}}
    for part in parts:
        out["per_pair"].update(part["per_pair"])
        out["embedding"].update(part["embedding"])
    return out, n


def rope_on_ray(model_ref, texts: list[str], factors: list[float], layers: list[int], naive: bool,
                max_len: int, num_layers: int, num_workers: int | None, address: str | None = None) -> tuple[dict, int]:
    """``rope_layer_losses`` over Ray tasks (shards of layers), combined in the driver; also returns the count."""
    with ray_session(address):
        n = _workers(num_workers)
        shards = split_layers_by_cost(layers, n, num_layers, naive)
        args = [(model_ref, texts, list(factors), s, naive, max_len) for s in shards]
        parts = run_shards(rope_task, args, lambda i: f"layers {shards[i]}")
    base = [p["base_loss"] for p in parts]
    if max(base) - min(base) > 1e-6 * max(1.0, abs(base[0])):
        log.warning("rope probe: workers disagree on the base loss (%s); using the first", base)
    losses: dict = {f: {} for f in factors}
    per_text = {"base": parts[0]["per_text"]["base"], "num_tokens": parts[0]["per_text"]["num_tokens"],
                "losses": {f: {} for f in factors}}
    for part in parts:
        for f in factors:
            losses[f].update(part["losses"][f])
            per_text["losses"][f].update(part["per_text"]["losses"][f])
    return {"base_loss": base[0], "losses": losses, "num_tokens": parts[0]["num_tokens"], "per_text": per_text}, n
