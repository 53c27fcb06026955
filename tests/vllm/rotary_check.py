"""Run by test_vllm_rotary.py in the vllm venv: GarfaKeyRotary against vLLM's own rotary (its CPU kernel).

Prints one JSON line of max abs differences; the test asserts on them (this file asserts nothing itself).
"""

import json
import math

import torch


def main() -> None:
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope

    from coloc_ray.evaluation.vllm_plugin.models import _check_rotary
    from coloc_ray.evaluation.vllm_plugin.rotary import GarfaKeyRotary
    from coloc_ray.garfa.core import key_inv_freq

    torch.manual_seed(0)
    d, heads, kv, tokens = 64, 6, 3, 37
    out = {}
    with set_current_vllm_config(VllmConfig()):
        for name, params in {"default": {"rope_type": "default", "rope_theta": 100000.0},
                             "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 64}}.items():
            rot = get_rope(d, max_position=4096, is_neox_style=True, rope_parameters=params, dtype=torch.float32)
            _check_rotary(rot, 0)
            pos = torch.randint(0, 4000, (tokens,))
            q, k = torch.randn(tokens, heads * d), torch.randn(tokens, kv * d)
            q_ref, k_ref = rot(pos, q.clone(), k.clone())  # vLLM's own rotation (its CPU kernel, in place)
            inv = rot._compute_inv_freq(rot.base).float()
            ones = GarfaKeyRotary(rot, key_inv_freq(inv, torch.ones(kv)), d)
            q1, k1 = ones(pos, q.clone(), k.clone())
            alpha = torch.tensor([0.5, 1.0, 3.0])
            garfa = GarfaKeyRotary(rot, key_inv_freq(inv, alpha), d)
            q2, k2 = garfa(pos, q.clone(), k.clone())
            # naive, fp64: head g's pair i turns by pos * inv[i] * alpha_g ** (-2i/d)
            i = torch.arange(d // 2, dtype=torch.float64)
            ang = pos.double()[:, None, None] * (inv.double() * alpha.double()[:, None] ** (-2 * i / d))[None]
            kk = k.double().view(tokens, kv, d)
            x1, x2 = kk[..., : d // 2], kk[..., d // 2:]
            k_naive = torch.cat((x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()), -1)
            out[name] = {
                "alpha1_keys_vs_vllm": (k1 - k_ref).abs().max().item(),
                "alpha1_queries_vs_vllm": (q1 - q_ref).abs().max().item(),
                "garfa_queries_vs_vllm": (q2 - q_ref).abs().max().item(),
                "garfa_keys_vs_naive": (k2.double().view(tokens, kv, d) - k_naive).abs().max().item(),
                "garfa_keys_vs_vllm": (k2 - k_ref).abs().max().item(),
                "scaled": not math.isclose(inv[-1].item(), 1.0 / params["rope_theta"] ** ((d - 2) / d), rel_tol=1e-4),
            }
    out["registry"] = _registry()
    print("RESULT " + json.dumps(out))


def _registry() -> dict:
    """What vLLM's registry makes of the plugin's architectures (after the entry-point hook ran)."""
    from vllm import ModelRegistry
    from vllm.model_executor.models.interfaces import supports_lora
    from vllm.plugins import load_general_plugins

    from coloc_ray.evaluation.vllm_plugin import GARFA_ARCHS

    load_general_plugins()  # what every vLLM process does: runs coloc_garfa = ...vllm_plugin:register
    res = {}
    for hf_arch, (name, _) in GARFA_ARCHS.items():
        cls = ModelRegistry._try_load_model_cls(name)
        base = ModelRegistry._try_load_model_cls(hf_arch)
        res[name] = {"subclass_of_vllm_model": bool(cls and base and issubclass(cls, base)),
                     "supports_lora": bool(cls and supports_lora(cls))}
    return res


if __name__ == "__main__":
    main()
