"""Public probe API (docs/ARCHITECTURE.md "Probes"): one call per probe, returning its JSON dict.

``num_workers``: ``None`` = one Ray task per CPU (per GPU on a GPU cluster) via
:func:`coloc_ray.raycluster.default_num_workers`; ``N >= 1`` = N Ray tasks; ``0`` = in this process, no Ray
(unit tests, quick runs, an already-loaded model with changed weights). Every user mistake raises a
:class:`~coloc_ray.errors.UserError` before the model is loaded.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from coloc_ray.errors import UserError
from coloc_ray.probes.checks import (
    check_num_workers,
    check_pooling,
    check_rope_args,
    check_top_k,
    model_identity,
    model_ref,
)
from coloc_ray.probes.evaltexts import resolve_eval_texts
from coloc_ray.probes.pairs import MinimalPair, load_pairs
from coloc_ray.probes.rope_influence import influence_profile, per_text_record, rope_layer_losses
from coloc_ray.probes.sensitivity import aggregate, embedding_reference, probe_pairs, top_k_layers

log = logging.getLogger(__name__)


def _loaded(model):
    from coloc_ray.models import ModelRef, load_model

    if isinstance(model, (str, ModelRef)):
        return load_model(model)  # a ModelRef: refuses weights other than the resolved ones
    return model


def _resolve_pairs(pairs) -> list[MinimalPair]:
    if pairs is None or isinstance(pairs, (str, bytes)) or hasattr(pairs, "__fspath__"):
        return load_pairs(pairs)
    out = [p if isinstance(p, MinimalPair) else MinimalPair(**p) for p in pairs]
    if not out:
        raise UserError("pairs: the list of minimal pairs is empty")
    return out


def run_sensitivity(model, pairs=None, pooling: str = "mean", sink_multiple: float = 10.0, top_k: int | None = 10,
                    num_workers: int | None = None, address: str | None = None) -> dict:
    """Correctness-differential sensitivity per layer (METHOD 1) = ``sensitivity.json``.

    Args:
        model: a ``--model`` spec, a :class:`~coloc_ray.models.ModelRef` (every task checks its node's weights)
            or a :class:`~coloc_ray.models.LoadedModel` (fp32).
        pairs: None (the shipped 15), a JSONL path, or a list of MinimalPair / dicts.
        pooling: ``mean`` | ``mean-nosink`` | ``last``; ``sink_multiple`` applies to ``mean-nosink``.
        top_k: how many layers ``top_layers`` lists (ties to the lower index); the default 10 (or None)
            becomes ``min(10, L)`` on a shallower model, an explicit k outside 1..L is a UserError.
        num_workers, address: see the module docstring.

    Returns:
        ``model, num_layers, scores[L], per_domain{domain: [L]}, per_pair{id: [L]}, embedding{score,
        per_pair{id: float}} (the same distance on the input embeddings, before any block), top_k, top_layers,
        pooling, sink_multiple, pair_domains, num_pairs, num_workers, wall_s``.
    """
    check_pooling(pooling, sink_multiple)
    plist = _resolve_pairs(pairs)
    ref, num_layers = model_ref(model)
    top_k = check_top_k(None if top_k == 10 else top_k, num_layers)
    check_num_workers(num_workers)
    t0 = time.time()
    lm = None
    if num_workers == 0:
        lm, workers = _loaded(model), 0
        got = probe_pairs(lm.model, lm.tokenizer, plist, pooling, sink_multiple)
    else:
        from coloc_ray.probes.distributed import sensitivity_on_ray

        got, workers = sensitivity_on_ray(ref, plist, pooling, sink_multiple, num_workers, address)
    spec, fingerprint = model_identity(lm if lm is not None else model)
    per_pair = got["per_pair"]
    scores, per_domain = aggregate(plist, per_pair)
    return {
        "model": spec, "model_fingerprint": fingerprint, "num_layers": num_layers, "scores": scores,
        "per_domain": per_domain,
        "per_pair": {p.id: per_pair[p.id] for p in plist},
        "embedding": embedding_reference(plist, got["embedding"]), "top_k": top_k,
        "top_layers": top_k_layers(scores, top_k), "pooling": pooling, "sink_multiple": sink_multiple,
        "pair_domains": {p.id: p.domain for p in plist}, "num_pairs": len(plist), "num_workers": workers,
        "wall_s": round(time.time() - t0, 3),
    }


def run_rope_influence(model, eval_data=None, factors: Sequence[float] = (2.0,), layers=None, naive: bool = False,
                       max_len: int = 512, num_workers: int | None = None, address: str | None = None,
                       num_texts: int | None = None) -> dict:
    """RoPE influence per layer (METHOD 2) = ``rope_influence.json``.

    Args:
        model: a ``--model`` spec, a ModelRef or a LoadedModel (fp32).
        eval_data: None (the seeded held-out slice of the training mix), a JSONL path (``text`` per line),
            or a list of strings; ``num_texts`` keeps the first N.
        factors: RoPE frequency factors f (layer l uses ``inv_freq * f**(-2i/d)``).
        layers: the layers to probe (default all); the rest are interpolated and flagged.
        naive: full forward per (layer, factor) instead of the cached tail recompute (same numbers).
        max_len: texts are truncated to this many tokens.

    Returns:
        ``model, num_layers, factors, base_loss, scores[L], interpolated[L], losses{factor: [L]}, layers,
        naive, max_len, num_texts, num_tokens, per_text{base[N], num_tokens[N], losses{factor: {layer: [N]}}}
        (per-text CE sums and target counts of the probed layers: the bootstrap over texts resamples them),
        num_workers, wall_s``.
    """
    texts = resolve_eval_texts(eval_data, num_texts)
    ref, num_layers = model_ref(model)
    facs, lays = check_rope_args(factors, layers, num_layers, max_len)
    check_num_workers(num_workers)
    t0 = time.time()
    lm = None
    if num_workers == 0:
        lm, workers = _loaded(model), 0
        raw = rope_layer_losses(lm.model, lm.tokenizer, texts, facs, lays, naive=naive, max_len=max_len)
    else:
        from coloc_ray.probes.distributed import rope_on_ray

        raw, workers = rope_on_ray(ref, texts, facs, lays, naive, max_len, num_layers, num_workers, address)
    prof = influence_profile(raw, facs, lays, num_layers)
    spec, fingerprint = model_identity(lm if lm is not None else model)
    return {
        "model": spec, "model_fingerprint": fingerprint, "num_layers": num_layers, "factors": facs,
        "base_loss": raw["base_loss"],
        "scores": prof["scores"], "interpolated": prof["interpolated"], "losses": prof["losses"],
        "layers": lays, "naive": naive, "max_len": max_len, "num_texts": len(texts),
        "num_tokens": raw["num_tokens"], "per_text": per_text_record(raw, facs, lays), "num_workers": workers,
        "wall_s": round(time.time() - t0, 3),
    }
