"""Registry of supported GQA model families: where their decoder layers and rotary embedding live."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFamily:
    """How to find the pieces the probes and GARFA need inside an HF causal LM of one family.

    Attributes:
        model_type: ``config.model_type`` as HF writes it.
        layers_path: dotted path from the CausalLM to its ``nn.ModuleList`` of decoder blocks.
        rotary_path: dotted path to the shared rotary-embedding module.
        norm_path: dotted path to the final norm (applied after the last block).
    """

    model_type: str
    layers_path: str = "model.layers"
    rotary_path: str = "model.rotary_emb"
    norm_path: str = "model.norm"


FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family (idempotent); returns it so it can be used as a one-liner at import time."""
    FAMILIES[family.model_type] = family
    return family


# Llama 2/3.x (and SmolLM2), Qwen2/2.5, Mistral share the HF decoder layout.
for _t in ("llama", "qwen2", "mistral"):
    register_family(ModelFamily(_t))


def family_for(model_type: str, name: str) -> ModelFamily:
    """The family of ``model_type``, or a UserError naming the model and the supported families."""
    from coloc_ray.errors import UserError

    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UserError(
            f"model {name!r} has model_type {model_type!r}, which coloc-ray does not support; "
            f"supported families: {', '.join(sorted(FAMILIES))} (register_family() adds one)"
        ) from None
