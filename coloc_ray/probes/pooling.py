"""Token poolings of block outputs (METHOD 1): a dict plus :func:`register_pooling` (STYLE 4).

A pooling turns one text's token states into one vector: ``fn(h, m, sink_multiple) -> [B, D]`` with ``h`` the
states ``[B, T, D]`` in fp64 and ``m`` the real-token mask ``[B, T]`` (bool, on ``h``'s device). The probe API,
the CLI (``--pooling``) and the study file (``probes.pooling``) accept exactly the names registered here.
torch is imported inside each pooling, so checking a name (``probes.checks``) needs no torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from coloc_ray.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pooling:
    """One pooling: its registry name, ``fn(h, m, sink_multiple) -> [B, D]`` and a one-line description."""

    name: str
    fn: Callable
    description: str


POOLINGS: dict[str, Pooling] = {}


def register_pooling(name: str, description: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the pooling ``name`` (a later registration of the name replaces it)."""
    def deco(fn: Callable) -> Callable:
        POOLINGS[name] = Pooling(name, fn, description)
        return fn
    return deco


def get_pooling(name: str) -> Pooling:
    """The pooling called ``name``, or a one-line UserError listing the valid names."""
    try:
        return POOLINGS[name]
    except KeyError:
        raise UserError(f"--pooling {name!r}: use one of {', '.join(POOLINGS)}") from None


def _masked_mean(h, m):
    w = m.double().unsqueeze(-1)
    return (h * w).sum(dim=1) / w.sum(dim=1)


@register_pooling("mean", "mean over the real tokens (the paper's default)")
def mean(h, m, sink_multiple: float):
    return _masked_mean(h, m)


@register_pooling("mean-nosink", "mean without the first token and attention sinks (norm > sink_multiple x median)")
def mean_nosink(h, m, sink_multiple: float):
    """Drops the first real token and every token whose norm exceeds ``sink_multiple`` x the sequence's median
    token norm (median over real tokens, interpolated); a sequence left with no token falls back to the mean."""
    import torch

    norms = h.norm(dim=-1)
    median = torch.nanquantile(norms.masked_fill(~m, float("nan")), 0.5, dim=1, keepdim=True)
    keep = m & (norms <= sink_multiple * median)
    first = m.float().argmax(dim=1)  # first real token (index 0 under right padding)
    keep[torch.arange(m.shape[0], device=h.device), first] = False
    empty = keep.sum(dim=1) == 0
    if bool(empty.any()):
        log.warning("mean-nosink: %d sequence(s) had no token left; used the plain mean", int(empty.sum()))
        keep[empty] = m[empty]
    return _masked_mean(h, keep)


@register_pooling("last", "the last real token")
def last(h, m, sink_multiple: float):
    import torch

    pos = torch.arange(m.shape[1], device=h.device).expand_as(m)
    idx = torch.where(m, pos, torch.full_like(pos, -1)).max(dim=1).values
    return h[torch.arange(h.shape[0], device=h.device), idx]
