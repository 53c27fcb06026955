"""Correctness-differential sensitivity per layer (METHOD 1), in plain torch: no Ray, no MLflow.

h_l(x) is the output of decoder block l (the residual stream after block l, before the final norm), read
with forward hooks (``output_hidden_states`` would hand back the post-norm state for the last layer),
pooled over the non-padding tokens in fp64. delta_l = 1 - cos(h_l(x+), h_l(x-));
S_l = mean over domains of the per-domain mean of delta_l. The same distance on the input embedding
lookup (before any block) is the reference row ``embedding``: how much of S_l is token identity.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from coloc_ray.models import decoder_layers, unwrap_model
from coloc_ray.probes.checks import check_pooling
from coloc_ray.probes.pairs import MinimalPair, domains_of
from coloc_ray.probes.pooling import get_pooling

log = logging.getLogger(__name__)

def tokenize_right(tokenizer, texts: Sequence[str], max_len: int | None = None) -> dict:
    """Right-padded batch: real tokens keep positions 0..n-1 and never attend to padding (causal)."""
    kw = {"truncation": True, "max_length": max_len} if max_len else {}
    enc = tokenizer(list(texts), padding=True, return_tensors="pt", padding_side="right", **kw)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def block_outputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of every decoder block (list of L tensors ``[B, T, hidden]``) from one fp32 forward."""
    base = unwrap_model(model)
    layers = decoder_layers(base)
    outs: list[torch.Tensor | None] = [None] * len(layers)

    def make_hook(i):
        def hook(_mod, _args, out):
            outs[i] = (out[0] if isinstance(out, tuple) else out).detach()
        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    # The decoder alone: the lm_head over the vocabulary is not needed for block outputs.
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
    dev = next(base.parameters()).device
    try:
        with torch.no_grad():
            decoder(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return outs  # type: ignore[return-value]


def pool(h: torch.Tensor, mask: torch.Tensor, pooling: str = "mean", sink_multiple: float = 10.0) -> torch.Tensor:
    """Pool ``h`` ``[B, T, D]`` over the tokens where ``mask`` ``[B, T]`` is 1; returns ``[B, D]`` fp64.

    ``pooling`` names a registered pooling (``probes/pooling.py``): ``mean``, ``mean-nosink`` (drops the first
    real token and attention sinks, tokens whose norm exceeds ``sink_multiple`` x the median), ``last``.
    """
    h = h.double()
    return get_pooling(pooling).fn(h, mask.to(h.device).bool(), sink_multiple)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - cos(a, b)`` along the last dim, in fp64."""
    a, b = a.double(), b.double()
    return 1.0 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def pair_deltas(model, tokenizer, pairs: Sequence[MinimalPair], pooling: str = "mean",
                sink_multiple: float = 10.0, batch_pairs: int = 8) -> dict[str, list[float]]:
    """delta_l for every pair: ``{pair_id: [L floats]}``.

    Each batch holds the correct and incorrect texts of up to ``batch_pairs`` pairs, right-padded together;
    one forward gives every layer at once.
    """
    check_pooling(pooling, sink_multiple)
    out: dict[str, list[float]] = {}
    for start in range(0, len(pairs), batch_pairs):
        chunk = list(pairs[start:start + batch_pairs])
        texts = [p.correct for p in chunk] + [p.incorrect for p in chunk]
        enc = tokenize_right(tokenizer, texts)
        hs = block_outputs(model, enc["input_ids"], enc["attention_mask"])
        n = len(chunk)
        per_layer = []
        for h in hs:
            pooled = pool(h, enc["attention_mask"], pooling, sink_multiple)
            per_layer.append(cosine_distance(pooled[:n], pooled[n:]))
        deltas = torch.stack(per_layer, dim=1).cpu()  # [n, L]
        for p, row in zip(chunk, deltas):
            out[p.id] = [float(v) for v in row]
    return out


def embedding_deltas(model, tokenizer, pairs: Sequence[MinimalPair], pooling: str = "mean",
                     sink_multiple: float = 10.0, batch_pairs: int = 8) -> dict[str, float]:
    """The embedding-output reference: ``{pair_id: 1 - cos(pool(e(x+)), pool(e(x-)))}``.

    ``e`` is the input embedding lookup (before any block), pooled with the layers' pooling. Gemma
    multiplies it by a per-model constant before block 0; cosine distance and the ``mean-nosink`` norm
    rule are scale-invariant, so the lookup gives block 0's input distance for every family. It says how
    much of a layer's S is token identity alone.
    """
    check_pooling(pooling, sink_multiple)
    emb = unwrap_model(model).get_input_embeddings()
    dev = emb.weight.device
    out: dict[str, float] = {}
    for start in range(0, len(pairs), batch_pairs):
        chunk = list(pairs[start:start + batch_pairs])
        enc = tokenize_right(tokenizer, [p.correct for p in chunk] + [p.incorrect for p in chunk])
        with torch.no_grad():
            e = emb(enc["input_ids"].to(dev))
        pooled = pool(e, enc["attention_mask"], pooling, sink_multiple)
        n = len(chunk)
        for p, v in zip(chunk, cosine_distance(pooled[:n], pooled[n:]).cpu()):
            out[p.id] = float(v)
    return out


def probe_pairs(model, tokenizer, pairs: Sequence[MinimalPair], pooling: str = "mean",
                sink_multiple: float = 10.0) -> dict:
    """What one worker computes: ``{"per_pair": pair_deltas(...), "embedding": embedding_deltas(...)}``."""
    return {"per_pair": pair_deltas(model, tokenizer, pairs, pooling, sink_multiple),
            "embedding": embedding_deltas(model, tokenizer, pairs, pooling, sink_multiple)}


def embedding_reference(pairs: Sequence[MinimalPair], per_pair: dict[str, float]) -> dict:
    """``{"score": S_emb, "per_pair": {id: delta_emb}}``, S_emb aggregated over domains as the layers' S."""
    scores, _ = aggregate(pairs, {p.id: [per_pair[p.id]] for p in pairs})
    return {"score": scores[0], "per_pair": {p.id: per_pair[p.id] for p in pairs}}


def aggregate(pairs: Sequence[MinimalPair], per_pair: dict[str, list[float]]) -> tuple[list[float], dict]:
    """S_l = mean over domains of the per-domain mean delta_l; returns ``(scores, per_domain)``."""
    per_domain: dict[str, list[float]] = {}
    for dom in domains_of(list(pairs)):
        rows = torch.tensor([per_pair[p.id] for p in pairs if p.domain == dom], dtype=torch.float64)
        per_domain[dom] = rows.mean(dim=0).tolist()
    scores = torch.tensor(list(per_domain.values()), dtype=torch.float64).mean(dim=0).tolist()
    return scores, per_domain


def top_k_layers(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the k highest scores (ties to the lower index), returned sorted ascending."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:k])
