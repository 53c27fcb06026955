"""The vLLM backend's pure-Python parts, in the main venv (no vLLM needed): engine arguments, errors, the
subprocess path, and the GARFA key rotary against a naive formula."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from coloc_ray.errors import UserError
from coloc_ray.evaluation import vllm_backend as vb
from coloc_ray.evaluation.vllm_plugin import garfa_hf_overrides, has_garfa
from coloc_ray.evaluation.vllm_plugin.rotary import GarfaKeyRotary
from tests.vllm.conftest import write_garfa


def _model_dir(tmp_path: Path, arch: str) -> Path:
    d = tmp_path / f"model_{arch}"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": [arch]}))
    return d


def _lora_dir(tmp_path: Path, r: int, rank_pattern=None) -> Path:
    d = tmp_path / f"lora_{r}"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": r, "rank_pattern": rank_pattern or {}}))
    return d


@pytest.mark.parametrize("arch, garfa_arch", [("LlamaForCausalLM", "GarfaLlamaForCausalLM"),
                                              ("Qwen2ForCausalLM", "GarfaQwen2ForCausalLM"),
                                              ("MistralForCausalLM", "GarfaMistralForCausalLM")])
def test_hf_overrides_name_the_garfa_twin_and_the_directory(tmp_path, arch, garfa_arch):
    g = write_garfa(tmp_path / "g", [0], torch.zeros(1, 2), 4, 16)
    ov = garfa_hf_overrides(_model_dir(tmp_path, arch), g)
    assert ov == {"architectures": [garfa_arch], "garfa_path": str(g.resolve())}


def test_hf_overrides_refuse_unsupported_arch_and_missing_files(tmp_path):
    g = write_garfa(tmp_path / "g", [0], torch.zeros(1, 2), 4, 16)
    with pytest.raises(UserError, match="GPT2LMHeadModel.*--backend hf"):
        garfa_hf_overrides(_model_dir(tmp_path, "GPT2LMHeadModel"), g)
    with pytest.raises(UserError, match="no garfa.json"):
        garfa_hf_overrides(_model_dir(tmp_path, "LlamaForCausalLM"), tmp_path)
    assert not has_garfa(None) and not has_garfa(tmp_path) and has_garfa(g)


@pytest.mark.parametrize("r, pattern, want", [(8, None, 8), (12, None, 16), (16, None, 16), (16, {"x": 40}, 64)])
def test_engine_kwargs_lora_rank_rounds_up_to_a_vllm_rank(tmp_path, r, pattern, want):
    kw = vb.engine_kwargs({"model_dir": str(_model_dir(tmp_path, "LlamaForCausalLM")),
                           "adapter_dir": str(_lora_dir(tmp_path, r, pattern))})
    assert kw["enable_lora"] is True and kw["max_lora_rank"] == want
    assert "hf_overrides" not in kw and kw["enforce_eager"] is (not torch.cuda.is_available())


def test_engine_kwargs_with_lora_and_garfa_and_rank_too_large(tmp_path):
    lora = _lora_dir(tmp_path, 16)
    write_garfa(lora, [1, 3], torch.ones(2, 2), 4, 16)
    model = str(_model_dir(tmp_path, "LlamaForCausalLM"))
    kw = vb.engine_kwargs({"model_dir": model, "adapter_dir": str(lora), "dtype": "float32"})
    assert kw["hf_overrides"]["architectures"] == ["GarfaLlamaForCausalLM"] and kw["enable_lora"]
    assert kw["dtype"] == "float32" and kw["model"] == model
    with pytest.raises(UserError, match="rank 600"):
        vb.engine_kwargs({"model_dir": model, "adapter_dir": str(_lora_dir(tmp_path, 600))})


def test_resolve_rejects_bad_inputs_before_any_engine(tmp_path):
    model = str(_model_dir(tmp_path, "LlamaForCausalLM"))
    with pytest.raises(UserError, match="neither a PEFT adapter"):
        vb._resolve({"model_dir": model, "prompts": ["x"], "adapter_dir": str(tmp_path)})
    with pytest.raises(UserError, match="no prompts"):
        vb._resolve({"model_dir": model, "prompts": []})
    with pytest.raises(UserError, match="GGUF"):
        vb._resolve({"model_dir": str(tmp_path / "m.gguf"), "prompts": ["x"]})
    ok = vb._resolve({"model_dir": model, "prompts": ["x"], "adapter_dir": None})
    assert ok["model_dir"] == str(Path(model).resolve())


def test_no_vllm_anywhere_is_a_user_error(tmp_path, monkeypatch):
    if vb.importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm importable in this venv: the in-process path is taken")
    monkeypatch.setenv("COLOC_VLLM_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(UserError, match="setup.sh vllm"):
        vb.generate_vllm(str(_model_dir(tmp_path, "LlamaForCausalLM")), ["x"], 4)


def test_subprocess_path_reports_child_errors(tmp_path):
    """A python without vLLM stands in for the vllm venv: the child's failure comes back with its log tail,
    and a UserError raised in the child comes back as the same one-line UserError."""
    model = str(_model_dir(tmp_path, "LlamaForCausalLM"))
    job = {"model_dir": model, "prompts": ["x"], "max_new_tokens": 2}
    if vb.importlib.util.find_spec("vllm") is None:
        with pytest.raises(RuntimeError, match="No module named 'vllm'"):
            vb._run_subprocess(Path(sys.executable), [job], timeout=300)
    with pytest.raises(UserError, match="neither a PEFT adapter"):
        vb._run_subprocess(Path(sys.executable), [{**job, "adapter_dir": str(tmp_path)}], timeout=300)


def test_main_usage_error():
    assert vb.main([]) == 2


class _PlainRope(torch.nn.Module):
    """Stand-in for vLLM's rotary: neox rotation of every head with one inv_freq (returns key untouched)."""

    def __init__(self, inv, d):
        super().__init__()
        self.inv, self.d = inv, d

    def forward(self, positions, query, key=None):
        q = query.view(positions.shape[0], -1, self.d).double()
        ang = positions.double()[:, None, None] * self.inv.double()[None, None]
        x1, x2 = q.chunk(2, -1)
        q = torch.cat((x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()), -1)
        return q.to(query.dtype).reshape(query.shape), key


def _naive_keys(pos, k, inv, alpha, d, neox):
    """Per head g and pair i: rotate by pos * inv[i] * alpha_g ** (-2i/d), fp64, pairs by hand."""
    out = k.double().clone()
    for t in range(k.shape[0]):
        for g in range(k.shape[1]):
            for i in range(d // 2):
                a = float(pos[t]) * float(inv[i]) * float(alpha[g]) ** (-2 * i / d)
                j1, j2 = (i, i + d // 2) if neox else (2 * i, 2 * i + 1)
                x1, x2 = float(k[t, g, j1]), float(k[t, g, j2])
                out[t, g, j1], out[t, g, j2] = x1 * math.cos(a) - x2 * math.sin(a), x2 * math.cos(a) + x1 * math.sin(a)
    return out


@pytest.mark.parametrize("neox", [True, False])
def test_key_rotary_matches_naive_per_head_formula(neox):
    from coloc_ray.garfa.core import key_inv_freq

    torch.manual_seed(0)
    d, g, h, t = 8, 2, 4, 5
    inv = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
    alpha = torch.tensor([0.3, 2.5])
    rot = GarfaKeyRotary(_PlainRope(inv, d), key_inv_freq(inv, alpha), d, is_neox_style=neox)
    pos = torch.tensor([0, 3, 17, 100, 511])
    q, k = torch.randn(t, h * d), torch.randn(t, g * d)
    q2, k2 = rot(pos, q.clone(), k.clone())
    assert torch.equal(q2, _PlainRope(inv, d)(pos, q.clone())[0])  # queries: the base rotary's, untouched
    want = _naive_keys(pos, k.view(t, g, d), inv, alpha, d, neox)
    torch.testing.assert_close(k2.view(t, g, d).double(), want, rtol=0, atol=1e-4)
    assert (k2 - k).abs().max() > 0.1
    # a [tokens, heads, d] key keeps its shape; no key passes through
    assert rot(pos, q.clone(), k.view(t, g, d).clone())[1].shape == (t, g, d)
    assert rot(pos, q.clone(), None)[1] is None
