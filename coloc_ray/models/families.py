"""Registry of supported GQA model families: where their pieces live and how they differ (docs/MODELS.md).

One entry per HF ``config.model_type``. The probes, LS-LoRA and GARFA read what differs from here (the FSDP
wrap unit is the loaded model's own ``_no_split_modules``); the HF attention details GARFA needs (q/k norms,
fused q/k/v, soft-capping) live beside its patch in ``coloc_ray.garfa.patch``, which registers them for the
same model types. A model type whose HF modules are another family's (a renamed fork, e.g. a Llama under its
own model_type) is one :func:`register_family_alias` line: it shares that family's entry and its GARFA
attention (CONTRIBUTING.md: adding a model family).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# METHOD 4's "seven projections" of a Llama-style block (attention q/k/v/o and the gated MLP).
SEVEN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelFamily:
    """How to find the pieces the probes, LoRA and GARFA need inside an HF causal LM of one family.

    Attributes:
        model_type: ``config.model_type`` as HF writes it.
        layers_path: dotted path from the CausalLM to its ``nn.ModuleList`` of decoder blocks.
        rotary_path: dotted path to the shared rotary-embedding module.
        norm_path: dotted path to the final norm (applied after the last block).
        lora_targets: the module names LS-LoRA adapts (METHOD's seven projections under this family's names:
            Phi-3 fuses them into ``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj``).
        lora_target_parameters: 3-D expert weights adapted through PEFT's ``target_parameters`` (MoE families
            whose experts are one ``nn.Parameter`` per projection, not ``nn.Linear`` modules); the router is
            never listed.
        final_logit_softcap: name of the config field that soft-caps the output logits
            (``logits = cap * tanh(logits / cap)``, Gemma 2), or None.
        like: for an alias, the family whose code paths it shares (GARFA's attention handling); else None.
    """

    model_type: str
    layers_path: str = "model.layers"
    rotary_path: str = "model.rotary_emb"
    norm_path: str = "model.norm"
    lora_targets: tuple[str, ...] = SEVEN_PROJECTIONS
    lora_target_parameters: tuple[str, ...] = ()
    final_logit_softcap: str | None = None
    like: str | None = None


FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family (idempotent); returns it so it can be used as a one-liner at import time."""
    FAMILIES[family.model_type] = family
    return family


def register_family_alias(model_type: str, like: str, **changes) -> ModelFamily:
    """Register ``model_type`` as an alias of the family ``like`` (same entry, ``changes`` applied)."""
    from coloc_ray.errors import UserError

    if like not in FAMILIES:
        raise UserError(f"family alias {model_type!r}: unknown family {like!r}; "
                        f"supported families: {', '.join(sorted(FAMILIES))}")
    base = FAMILIES[like]
    return register_family(replace(base, model_type=model_type, like=base.like or like, **changes))


# Llama 2/3.x (and SmolLM2), Qwen2/2.5, Mistral share the HF decoder layout.
register_family(ModelFamily("llama"))
register_family(ModelFamily("qwen2"))
register_family(ModelFamily("mistral"))
# Qwen3: RMS norm on each query / key head before RoPE (q_norm, k_norm); otherwise the Llama layout.
register_family(ModelFamily("qwen3"))
# Gemma 2: sliding / global layers alternate, query_pre_attn_scalar, attention and final-logit soft-capping.
register_family(ModelFamily("gemma2", final_logit_softcap="final_logit_softcapping"))
# Gemma 3 text (gemma-3-1b; Gemma3ForCausalLM): Gemma 2's layout without attention soft-capping, plus q/k norms
# and a RoPE base per layer type (10k on sliding layers, 1M on global ones, linearly scaled on the 4B+ models).
register_family(ModelFamily("gemma3_text", final_logit_softcap="final_logit_softcapping"))
# Phi-3 / Phi-3.5 / Phi-4-mini: fused qkv_proj and gate_up_proj (four modules for the seven projections),
# partial rotary (Phi-4-mini rotates 3/4 of each head) and longrope scaling.
register_family(ModelFamily("phi3", lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj")))
# Qwen3-MoE: Qwen3 attention; experts are 3-D parameters (gate_up_proj [E, 2I, D], down_proj [E, D, I]), adapted
# per expert through PEFT's target_parameters; the router (mlp.gate) is left alone. The MLP names are not listed as
# modules: peft 0.21 rewrites gate/up/down_proj targets of this model type into expert parameters on every layer
# (its transformers-v4 compatibility), which would break the layer restriction. So the dense MLP of layers in
# mlp_only_layers (none in the released checkpoints) gets no LoRA.
register_family(ModelFamily(
    "qwen3_moe", lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
    lora_target_parameters=("mlp.experts.gate_up_proj", "mlp.experts.down_proj")))


# Model types people ask for that are not supported, with what to use instead (named in the error).
NEAR_MISSES = {
    "gemma3": "the multimodal Gemma 3 (4B and up, Gemma3ForConditionalGeneration); the text-only "
              "google/gemma-3-1b-it (gemma3_text) is supported",
    "mixtral": "the supported mixture-of-experts family is qwen3_moe (e.g. Qwen/Qwen3-30B-A3B)",
    "qwen2_moe": "the supported mixture-of-experts family is qwen3_moe (e.g. Qwen/Qwen3-30B-A3B)",
    "phimoe": "the supported mixture-of-experts family is qwen3_moe (e.g. Qwen/Qwen3-30B-A3B)",
}


def family_for(model_type: str, name: str) -> ModelFamily:
    """The family of ``model_type``, or a UserError naming the model, its type and the supported families."""
    from coloc_ray.errors import UserError

    try:
        return FAMILIES[model_type]
    except KeyError:
        hint = f" ({NEAR_MISSES[model_type]})" if model_type in NEAR_MISSES else ""
        raise UserError(
            f"model {name!r} has model_type {model_type!r}, which coloc-ray does not support{hint}; "
            f"supported families: {', '.join(sorted(FAMILIES))} (register_family() adds one)"
        ) from None
