"""vLLM model classes with GARFA: vLLM's own Llama / Qwen2 / Mistral / Qwen3 / Qwen3-MoE / Gemma 2 / Gemma 3 /
Phi-3, with the keys of the GARFA layers rotated per KV head (METHOD 5). Imported by vLLM only (lazily, through the
registry), inside the vLLM venv. Every one of these vLLM attentions calls ``q, k = self.rotary_emb(positions, q, k)``
after its q/k norms (Qwen3, Gemma 3) and after splitting its fused qkv_proj, so wrapping the layer's own rotary
(Gemma 3: a local or a global one per layer) is all GARFA needs.

Everything but the key rotation is vLLM's: weights, LoRA (``SupportsLoRA`` is inherited, so a PEFT adapter goes
through ``enable_lora=True`` + ``LoRARequest``), paged attention, tensor/pipeline parallelism.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from vllm.model_executor.models.gemma2 import Gemma2ForCausalLM
from vllm.model_executor.models.gemma3 import Gemma3ForCausalLM
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.mistral import MistralForCausalLM
from vllm.model_executor.models.phi3 import Phi3ForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM
from vllm.model_executor.models.qwen3_moe import Qwen3MoeForCausalLM

from coloc_ray.errors import UserError
from coloc_ray.evaluation.vllm_plugin import CONFIG_KEY
from coloc_ray.evaluation.vllm_plugin.rotary import GarfaKeyRotary


def _key_base_inv_freq(rot: nn.Module, layer: int) -> torch.Tensor:
    """The layer's own ``inv_freq`` (after its rope scaling), fp32 on CPU: ``rotary_dim / 2`` entries.

    GARFA rescales ``inv_freq``; that is exact only for rope types whose table is cos/sin(t * inv_freq):
    default and llama3 (which overrides ``_compute_inv_freq``), partial rotary (Phi-4-mini), and linear scaling
    with one factor (Gemma 3 global layers: cos/sin(t / f * inv_freq)). Anything else is a UserError.
    """
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding, RotaryEmbeddingBase
    from vllm.model_executor.layers.rotary_embedding.linear_scaling_rope import LinearScalingRotaryEmbedding

    plain_table = type(rot)._compute_cos_sin_cache is RotaryEmbeddingBase._compute_cos_sin_cache
    linear = isinstance(rot, LinearScalingRotaryEmbedding) and len(rot.scaling_factors) == 1
    if not isinstance(rot, RotaryEmbedding) or not (plain_table or linear) or rot.rotary_dim > rot.head_size:
        raise UserError(
            f"GARFA in vLLM: layer {layer} uses {type(rot).__name__} (rotary_dim {getattr(rot, 'rotary_dim', '?')}, "
            f"head {getattr(rot, 'head_size', '?')}); only RoPE with a cos/sin(t*inv_freq) table (default, llama3, "
            "one-factor linear scaling, partial rotary) is supported: use --backend hf for this model")
    inv = rot._compute_inv_freq(rot.base).to("cpu", torch.float32)
    return inv / float(rot.scaling_factors[0]) if linear else inv


def _check_rotary(rot: nn.Module, layer: int) -> None:
    """UserError unless GARFA can rescale the layer's rotary exactly (see :func:`_key_base_inv_freq`)."""
    _key_base_inv_freq(rot, layer)


def _local_kv_heads(attn: nn.Module) -> list[int]:
    """Indices of the KV heads this tensor-parallel rank holds (vLLM splits them, or replicates when G < TP)."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    tp, rank = get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()
    total, local = attn.total_num_kv_heads, attn.num_kv_heads
    if total >= tp:
        return list(range(rank * local, (rank + 1) * local))
    return [rank * total // tp]


def _read_spec(vllm_config) -> tuple[dict, torch.Tensor]:
    """(garfa.json, alpha ``[|Y|, G]``) from the directory named by the HF config's ``garfa_path``."""
    from coloc_ray.garfa.core import GarfaScalers
    from coloc_ray.garfa.io import read_garfa

    cfg = vllm_config.model_config.hf_config
    path = getattr(cfg, CONFIG_KEY, None)
    if not path:
        raise UserError(f"GARFA vLLM model {cfg.architectures}: the HF config has no {CONFIG_KEY!r}; pass "
                        f"hf_overrides={{'{CONFIG_KEY}': <adapter dir>, ...}} (garfa_hf_overrides builds it)")
    meta, rho = read_garfa(Path(path))
    text = cfg.get_text_config()
    want = {"num_layers": text.num_hidden_layers,
            "num_kv_heads": getattr(text, "num_key_value_heads", None) or text.num_attention_heads}
    for key, val in want.items():
        if int(meta[key]) != int(val):
            raise UserError(f"GARFA file {path}/garfa.json was made for {key}={meta[key]}, but the vLLM model "
                            f"{vllm_config.model_config.model} has {key}={val}; serve the model it was trained on")
    scalers = GarfaScalers(meta["layers"], int(meta["num_kv_heads"]), int(meta["head_dim"]), c=float(meta["c"]))
    with torch.no_grad():
        scalers.rho.copy_(rho)
        alpha = scalers.alpha().detach()
    return meta, alpha


def install_garfa(model: nn.Module, vllm_config) -> list[int]:
    """Wrap the rotary of every GARFA layer this rank owns; returns the wrapped layer indices."""
    from coloc_ray.garfa.core import key_inv_freq

    meta, alpha = _read_spec(vllm_config)
    inner = model.model
    done = []
    for row, layer in enumerate(meta["layers"]):
        if not inner.start_layer <= layer < inner.end_layer:
            continue  # another pipeline stage holds it
        attn = inner.layers[layer].self_attn
        if int(meta["head_dim"]) != attn.head_dim:
            raise UserError(f"GARFA file {getattr(vllm_config.model_config.hf_config, CONFIG_KEY)}: head_dim "
                            f"{meta['head_dim']} but the model's is {attn.head_dim}; use the model it was trained on")
        rot = attn.rotary_emb
        base_inv = _key_base_inv_freq(rot, layer)  # the layer's own (Gemma 3: its layer type's base)
        inv_heads = key_inv_freq(base_inv, alpha[row].cpu())[_local_kv_heads(attn)]
        attn.rotary_emb = GarfaKeyRotary(rot, inv_heads.to(rot.cos_sin_cache.device), attn.head_dim,
                                         rot.is_neox_style)
        done.append(layer)
    return done


class GarfaLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's Llama (SmolLM2, Llama 2/3.x) with GARFA key rotation in the layers of ``garfa.json``."""

    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        self.garfa_layers = install_garfa(self, vllm_config)


class GarfaMistralForCausalLM(MistralForCausalLM):
    """vLLM's Mistral with GARFA key rotation (same attention layout as Llama)."""

    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        self.garfa_layers = install_garfa(self, vllm_config)


class GarfaQwen2ForCausalLM(Qwen2ForCausalLM):
    """vLLM's Qwen2 / Qwen2.5 with GARFA key rotation."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.garfa_layers = install_garfa(self, vllm_config)


def _garfa_class(base: type) -> type:
    """``Garfa<base>``: vLLM's ``base`` with GARFA installed after its own ``__init__``."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        self.garfa_layers = install_garfa(self, vllm_config)

    name = f"Garfa{base.__name__}"
    return type(name, (base,), {"__init__": __init__, "__module__": __name__, "__qualname__": name,
                                "__doc__": f"vLLM's {base.__name__} with GARFA key rotation (METHOD 5)."})


GarfaQwen3ForCausalLM = _garfa_class(Qwen3ForCausalLM)
GarfaQwen3MoeForCausalLM = _garfa_class(Qwen3MoeForCausalLM)
GarfaGemma2ForCausalLM = _garfa_class(Gemma2ForCausalLM)
GarfaGemma3ForCausalLM = _garfa_class(Gemma3ForCausalLM)
GarfaPhi3ForCausalLM = _garfa_class(Phi3ForCausalLM)
