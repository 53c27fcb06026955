"""Model loading and introspection: one place that knows how to find layers, heads and RoPE.

>>> lm = load_model("tiny-gqa")          # random 4-layer GQA Llama, built in-process
>>> lm.info.num_layers, lm.info.num_kv_heads
(4, 2)
>>> model_shape("tiny-gqa").num_layers  # from the config alone (also a hub id or a .gguf), no weights
4
"""

from coloc_ray.models.families import FAMILIES, ModelFamily, register_family
from coloc_ray.models.introspect import (
    ModelInfo,
    base_inv_freq,
    decoder_layers,
    model_info,
    rotary_embedding,
    unwrap_model,
)
from coloc_ray.models.loading import LoadedModel, load_model
from coloc_ray.models.ref import ModelRef, resolve_model_ref, weights_fingerprint
from coloc_ray.models.resolve import ALIASES, register_alias, resolve_model_dir
from coloc_ray.models.shape import ModelShape, model_shape

__all__ = [
    "ALIASES", "FAMILIES", "LoadedModel", "ModelFamily", "ModelInfo", "ModelRef", "ModelShape", "base_inv_freq",
    "decoder_layers", "load_model", "model_info", "model_shape", "register_alias", "register_family",
    "resolve_model_dir", "resolve_model_ref", "rotary_embedding", "unwrap_model", "weights_fingerprint",
]
