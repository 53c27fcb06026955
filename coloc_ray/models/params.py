"""A model's parameter counts per decoder block, from its config alone (the fine-tune's FLOPs estimate uses them)."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=8)
def param_counts(model_spec: str) -> tuple[tuple[int, ...], int]:
    """(parameters of each decoder block, parameters of the final norm + LM head) of ``model_spec``.

    Counted on the meta device from the model's config (no weights loaded), so a 4-bit base counts its full
    parameters (bitsandbytes packs two 4-bit weights per stored element). The LM head counts even when it is
    tied to the input embedding: its matmul runs either way; the embedding lookup itself is no matmul.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from coloc_ray.models import decoder_layers, resolve_model_dir
    from coloc_ray.models.introspect import final_norm

    path, extra = resolve_model_dir(model_spec)
    config = AutoConfig.from_pretrained(path, **extra)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    blocks = tuple(sum(p.numel() for p in block.parameters()) for block in decoder_layers(model))
    head = sum(p.numel() for p in final_norm(model).parameters())
    head += sum(p.numel() for p in model.get_output_embeddings().parameters())
    return blocks, head
