"""Fixtures for the vLLM plugin tests: the vllm venv (skip cleanly without it), GARFA / LoRA adapter dirs,
and an independent HF reference of GARFA written from raw tensors (fp64 attention, no cache)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def vllm_py() -> Path:
    """The vllm venv's python; the test is skipped when ``scripts/setup.sh vllm`` has not been run."""
    from coloc_ray.evaluation.vllm_backend import vllm_python

    py = vllm_python()
    if py is None:
        pytest.skip("no vllm venv (.venv-vllm or $COLOC_VLLM_PYTHON): run `scripts/setup.sh vllm`")
    return py


def run_in_vllm_venv(py: Path, script: Path, timeout: int = 600) -> dict:
    """Run ``script`` with the vllm python; return the JSON printed after its ``RESULT`` marker."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(py), str(script)], capture_output=True, text=True, env=env, timeout=timeout)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def write_garfa(out: Path, layers: list[int], rho: torch.Tensor, num_layers: int, head_dim: int) -> Path:
    """Write garfa.safetensors + garfa.json in the pinned format (docs/ARCHITECTURE.md) without coloc_ray.garfa."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    c = float(torch.log(torch.tensor(4.0, dtype=torch.float64)))
    save_file({"rho": rho.float().contiguous()}, str(out / "garfa.safetensors"))
    alpha = torch.exp(c * torch.tanh(rho.double()))
    (out / "garfa.json").write_text(json.dumps({
        "format_version": 1, "layers": layers, "num_kv_heads": int(rho.shape[1]), "head_dim": head_dim,
        "num_layers": num_layers, "c": c, "model": "smollm2-135m", "alpha": alpha.tolist()}))
    return out


def raw_garfa(model, layers: list[int], alpha: torch.Tensor) -> None:
    """Patch HF Llama attention of ``layers`` with a from-scratch GARFA forward (no cache, fp64 attention).

    Independent of coloc_ray.garfa and of vLLM: queries at the model's own frequencies, keys of KV head g at
    ``inv_freq[i] * alpha[g] ** (-2i/d)``, positions 0..T-1 (so it needs ``generate(use_cache=False)``).
    """
    inv = model.model.rotary_emb.inv_freq.double()
    for row, idx in enumerate(layers):
        attn = model.model.layers[idx].self_attn
        attn.forward = _raw_forward(attn, inv, alpha[row].double())


def _rope(x: torch.Tensor, inv_per_head: torch.Tensor) -> torch.Tensor:
    """x ``[B, h, T, d]`` fp64, inv ``[h, d/2]``: neox-style rotation at positions 0..T-1."""
    t = x.shape[2]
    ang = torch.arange(t, dtype=torch.float64)[None, :, None] * inv_per_head[:, None, :]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _raw_forward(attn, inv: torch.Tensor, alpha: torch.Tensor):
    def forward(hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kw):
        b, t, _ = hidden_states.shape
        d = attn.head_dim
        q = attn.q_proj(hidden_states).view(b, t, -1, d).transpose(1, 2).double()
        k = attn.k_proj(hidden_states).view(b, t, -1, d).transpose(1, 2).double()
        v = attn.v_proj(hidden_states).view(b, t, -1, d).transpose(1, 2).double()
        h, g = q.shape[1], k.shape[1]
        i = torch.arange(d // 2, dtype=torch.float64)
        q = _rope(q, inv[None].expand(h, -1))
        k = _rope(k, inv[None, :] * alpha[:, None] ** (-2 * i / d))
        k, v = k.repeat_interleave(h // g, dim=1), v.repeat_interleave(h // g, dim=1)
        scores = q @ k.transpose(-1, -2) * d ** -0.5
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h * d).to(hidden_states.dtype)
        return attn.o_proj(out), None
    return forward


def hf_greedy(model, tok, prompts: list[str], n: int, use_cache: bool = True) -> list[list[int]]:
    """Greedy new-token ids per prompt, one prompt at a time (no padding to reason about)."""
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = tok(p, return_tensors="pt").input_ids
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                 use_cache=use_cache, pad_token_id=tok.eos_token_id)
            out.append(gen[0, ids.shape[1]:].tolist())
    return out
