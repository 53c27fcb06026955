"""RoPE influence per layer (METHOD 2), in plain torch: no Ray, no MLflow.

For layer l and factor f, layer l's attention rotates queries and keys with ``inv_freq[i] * f**(-2i/d)``
(the model's own inv_freq, after its rope scaling, and its ``attention_scaling``); every other layer is
untouched. Transformers 5.x computes ``position_embeddings = (cos, sin)`` once in the decoder and hands them
to each block, so only layer l's pair is swapped.

Loss (both modes): the token-weighted mean next-token cross-entropy over the eval set, i.e. the sum over
texts and positions t of CE(logits[t], token[t+1]) where tokens t and t+1 are both real (not padding),
divided by the number of such targets. CE in fp32, sums in fp64.

CACHED mode runs one base pass that records the exact input of every block (the residual stream and the
kwargs the decoder built: causal/sliding masks, position ids and embeddings), then for each l recomputes
blocks l..L-1, the final norm and the head. Reusing the decoder's own kwargs means the masks are whatever
the model's forward builds (``create_causal_mask`` / sliding-window masks per layer type), never a copy.
NAIVE mode runs the full model once per (l, f) with a forward pre-hook swapping layer l's embeddings.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import torch
import torch.nn.functional as F

from coloc_ray.errors import UserError
from coloc_ray.models import decoder_layers, unwrap_model
from coloc_ray.models.introspect import final_logits, layer_rope
from coloc_ray.probes.sensitivity import tokenize_right

log = logging.getLogger(__name__)


def scaled_position_embeddings(model, position_ids: torch.Tensor, factor: float, dtype: torch.dtype,
                               layer: int = 0):
    """(cos, sin) as the model's rotary module computes them for ``layer``, with ``inv_freq * factor**(-2i/d)``.

    The layer's own table (Gemma 3: the local base on sliding layers, the global one on full layers); d is the
    rotary width (``2 * len(inv_freq)``, less than head_dim under partial rotary).
    """
    inv, scaling = layer_rope(model, layer)
    inv = inv.detach().double()
    d = 2 * inv.numel()
    scale = float(factor) ** (-2.0 * torch.arange(inv.numel(), dtype=torch.float64) / d)
    inv = (inv * scale.to(inv.device)).float()  # factor 1.0 gives back the model's inv_freq bit for bit
    # Same ops as LlamaRotaryEmbedding.forward (fp32 angles, cat, cos/sin, attention_scaling).
    freqs = position_ids[..., None].float() * inv.to(position_ids.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


def loss_sums(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[float, int]:
    """(sum of next-token CE over real targets in fp64, number of those targets)."""
    sums, counts = text_loss_sums(logits, input_ids, attention_mask)
    return sum(sums), sum(counts)


def text_loss_sums(logits: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> tuple[list[float], list[int]]:
    """Per text of the batch: (sums of next-token CE over its real targets in fp64, numbers of those targets)."""
    ids = input_ids.to(logits.device)
    m = attention_mask.to(logits.device).bool()
    valid = m[:, 1:] & m[:, :-1]
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                         reduction="none").reshape(valid.shape)
    sums = ce.double().masked_fill(~valid, 0.0).sum(dim=1)
    return [float(v) for v in sums.cpu()], [int(v) for v in valid.sum(dim=1).cpu()]


def _block_out(out):
    return out[0] if isinstance(out, tuple) else out


def capture_block_inputs(model, input_ids, attention_mask):
    """Base forward recording every block's input; returns ``(inputs[L], kwargs[L], base per-text loss sums)``."""
    base = unwrap_model(model)
    layers = decoder_layers(base)
    inputs: list = [None] * len(layers)
    kwargs: list = [None] * len(layers)

    def make_hook(i):
        def hook(_mod, args, kw):
            inputs[i] = args[0] if args else kw["hidden_states"]
            kwargs[i] = {k: v for k, v in kw.items() if k != "hidden_states"}
        return hook

    handles = [layer.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            logits = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    return inputs, kwargs, text_loss_sums(logits, input_ids, attention_mask)


def _swap(kw: dict, model, layer: int, factor: float, dtype) -> dict:
    pe = scaled_position_embeddings(model, kw["position_ids"], factor, dtype, layer)
    return {**kw, "position_embeddings": pe}


def cached_tail_loss(model, inputs, kwargs, layer: int, factor: float, input_ids, attention_mask):
    """Per-text loss sums (``text_loss_sums``) with layer ``layer`` scaled by ``factor``, recomputing only
    blocks layer..L-1 + norm + head."""
    base = unwrap_model(model)
    layers = decoder_layers(base)
    h = inputs[layer]
    with torch.no_grad():
        for j in range(layer, len(layers)):
            kw = _swap(kwargs[j], base, layer, factor, h.dtype) if j == layer else kwargs[j]
            h = _block_out(layers[j](h, **kw))
        logits = final_logits(base, h)  # norm, head and the family's soft-capping (Gemma 2)
    return text_loss_sums(logits, input_ids, attention_mask)


def naive_loss(model, input_ids, attention_mask, layer: int, factor: float):
    """Per-text loss sums from a full forward with only layer ``layer``'s position embeddings swapped (pre-hook)."""
    base = unwrap_model(model)

    def hook(_mod, args, kw):
        h = args[0] if args else kw["hidden_states"]
        return args, _swap(kw, base, layer, factor, h.dtype)

    handle = decoder_layers(base)[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    finally:
        handle.remove()
    return text_loss_sums(logits, input_ids, attention_mask)


def rope_layer_losses(model, tokenizer, texts: Sequence[str], factors: Sequence[float], layers: Sequence[int],
                      naive: bool = False, max_len: int = 512, batch_size: int = 4) -> dict:
    """L_base and L_{l,f} for each probed layer and factor over ``texts`` (truncated to ``max_len`` tokens).

    Every loss is the sum over texts (in text order) of the per-text CE sums divided by the number of
    targets, so ``per_text`` recomputes it bit for bit and a bootstrap over texts can resample it.

    Returns:
        ``{"base_loss": float, "losses": {factor: {layer: float}}, "num_tokens": int, "per_text":
        {"base": [sum per text], "num_tokens": [targets per text], "losses": {factor: {layer: [sum per text]}}}}``.
    """
    base = unwrap_model(model)
    dev = next(base.parameters()).device
    sums: dict = {(f, l): [] for f in factors for l in layers}
    base_sums: list[float] = []
    counts: list[int] = []
    t0 = time.time()
    for b in range(0, len(texts), batch_size):
        enc = tokenize_right(tokenizer, texts[b:b + batch_size], max_len=max_len)
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        if naive:
            with torch.no_grad():
                (s, n) = text_loss_sums(base(input_ids=ids, attention_mask=mask, use_cache=False).logits, ids, mask)
        else:
            inputs, kwargs, (s, n) = capture_block_inputs(base, ids, mask)
        base_sums += s
        counts += n
        last = min(b + batch_size, len(texts))
        for l in layers:
            for f in factors:
                if naive:
                    sums[(f, l)] += naive_loss(base, ids, mask, l, f)[0]
                else:
                    sums[(f, l)] += cached_tail_loss(base, inputs, kwargs, l, f, ids, mask)[0]
            log.info("rope probe: layer %d done on texts %d-%d of %d (%.1f s)", l, b + 1, last, len(texts),
                     time.time() - t0)
    count = sum(counts)
    if count == 0:
        raise UserError("eval texts: no text has 2 or more tokens, so there is no next-token loss; use longer texts")
    losses = {f: {l: sum(sums[(f, l)]) / count for l in layers} for f in factors}
    per_text = {"base": base_sums, "num_tokens": counts,
                "losses": {f: {l: sums[(f, l)] for l in layers} for f in factors}}
    return {"base_loss": sum(base_sums) / count, "losses": losses, "num_tokens": count, "per_text": per_text}


def factor_key(f: float) -> str:
    """JSON key of a factor: ``2.0`` -> ``"2.0"``."""
    return repr(float(f))


def per_text_record(raw: dict, factors: Sequence[float], layers: Sequence[int]) -> dict:
    """``rope_layer_losses``'s ``per_text`` in JSON form: ``{"base": [N], "num_tokens": [N],
    "losses": {factor_key: {str(layer): [N]}}}`` over the probed layers (interpolated ones have none)."""
    pt = raw["per_text"]
    return {"base": list(pt["base"]), "num_tokens": list(pt["num_tokens"]),
            "losses": {factor_key(f): {str(l): list(pt["losses"][f][l]) for l in sorted(layers)} for f in factors}}


def influence_profile(raw: dict, factors: Sequence[float], layers: Sequence[int], num_layers: int) -> dict:
    """I_l = mean over f of |L_{l,f} - L_base| for every layer; layers not probed are linearly interpolated.

    Outside the probed range the nearest probed value is kept (``numpy.interp``). Returns ``scores``,
    ``interpolated`` (bools) and ``losses`` ``{factor_key: [L]}`` (interpolated the same way).
    """
    import numpy as np

    probed = sorted(layers)
    xs = np.arange(num_layers)
    base = raw["base_loss"]
    infl = [float(np.mean([abs(raw["losses"][f][l] - base) for f in factors])) for l in probed]
    scores = np.interp(xs, probed, infl).tolist()
    losses = {factor_key(f): np.interp(xs, probed, [raw["losses"][f][l] for l in probed]).tolist()
              for f in factors}
    # Probed layers keep their exact values (interp at a knot returns it, but be explicit).
    for l, v in zip(probed, infl):
        scores[l] = v
        for f in factors:
            losses[factor_key(f)][l] = raw["losses"][f][l]
    return {"scores": scores, "interpolated": [i not in set(probed) for i in range(num_layers)], "losses": losses}
