"""In the vllm venv: GarfaKeyRotary against vLLM's own rotary kernel and a naive fp64 formula; the entry point's
registrations."""

from pathlib import Path

import pytest

from tests.vllm.conftest import run_in_vllm_venv

pytestmark = pytest.mark.vllm


def test_garfa_rotary_matches_vllm_at_alpha_one_and_naive_formula_otherwise(vllm_py):
    res = run_in_vllm_venv(vllm_py, Path(__file__).with_name("rotary_check.py"))
    assert res["default"]["scaled"] is False and res["llama3"]["scaled"] is True  # the llama3 table is really scaled
    reg = res.pop("registry")  # the entry point registered every GARFA twin, as a LoRA-capable vLLM subclass
    assert set(reg) == {"GarfaLlamaForCausalLM", "GarfaQwen2ForCausalLM", "GarfaMistralForCausalLM",
                        "GarfaQwen3ForCausalLM", "GarfaQwen3MoeForCausalLM", "GarfaGemma2ForCausalLM",
                        "GarfaGemma3ForCausalLM", "GarfaPhi3ForCausalLM"}  # docs/MODELS.md
    assert all(r["subclass_of_vllm_model"] and r["supports_lora"] for r in reg.values()), reg
    for name, r in res.items():
        # alpha = 1: bit-identical to vLLM's own CPU kernel, for queries and keys
        assert r["alpha1_keys_vs_vllm"] == 0.0, name
        assert r["alpha1_queries_vs_vllm"] == 0.0, name
        assert r["garfa_queries_vs_vllm"] == 0.0, name  # queries never change
        # keys: fp32 angles at positions < 4000 carry ~2.4e-4 rad of rounding; the naive one is fp64
        assert r["garfa_keys_vs_naive"] < 2e-3, name
        assert r["garfa_keys_vs_vllm"] > 0.5, name  # and GARFA does move them
