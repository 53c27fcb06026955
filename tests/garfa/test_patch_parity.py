"""The patched attention equals the unpatched model at init and an independent reference for random rho."""

import math

import pytest
import torch

from coloc_ray.garfa import apply_garfa, remove_garfa
from coloc_ray.models import decoder_layers, rotary_embedding
from tests.garfa.conftest import build_tiny_cfg, sharpen
from tests.garfa.reference import capture_attention, garfa_attention_reference

FAMILIES = ["tiny-gqa", "tiny-qwen2", "tiny-mistral"]
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("alias", FAMILIES)
def test_init_logits_equal_unpatched(tiny_model, ids, alias, impl):
    model = sharpen(tiny_model(alias, impl))
    ref = _logits(model, ids)
    scalers = apply_garfa(model, [0, 1, 3])
    assert scalers.rho.shape == (3, 2)
    torch.testing.assert_close(_logits(model, ids), ref, rtol=0, atol=1e-6)
    with torch.no_grad():  # and GARFA is live: a nonzero rho moves the logits
        scalers.rho.fill_(1.0)
    assert (_logits(model, ids) - ref).abs().max() > 1e-3


def _base_inv_freq(model):
    """Plain RoPE from the config (independent of the model's rotary module)."""
    d = model.config.head_dim
    theta = model.config.rope_parameters["rope_theta"]
    return 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("alias", FAMILIES)
def test_random_rho_matches_reference_attention(tiny_model, ids, alias, impl):
    model = sharpen(tiny_model(alias, impl))
    layer = 2
    scalers = apply_garfa(model, [0, layer])
    with torch.no_grad():
        scalers.rho.copy_(torch.tensor([[0.3, -0.8], [1.5, -1.2]]))
    alpha = torch.exp(math.log(4) * torch.tanh(torch.tensor([1.5, -1.2], dtype=torch.float64)))
    x, y = capture_attention(model, layer, ids)
    attn = decoder_layers(model)[layer].self_attn
    want = garfa_attention_reference(attn, x, _base_inv_freq(model), alpha)
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-5)
    # the reference is sensitive: plain RoPE (alpha = 1) is far from the GARFA output
    plain = garfa_attention_reference(attn, x, _base_inv_freq(model), torch.ones(2, dtype=torch.float64))
    assert (plain - want).abs().max() > 1e-2


def test_llama3_rope_scaling_init_and_key_frequencies(ids, monkeypatch):
    model = sharpen(build_tiny_cfg("llama", rope_parameters=LLAMA3, impl="sdpa"))
    own = rotary_embedding(model).inv_freq.double()
    assert not torch.allclose(own, _base_inv_freq(model))  # the scaling really changed the frequencies
    ref = _logits(model, ids)
    scalers = apply_garfa(model, [1, 2])
    torch.testing.assert_close(_logits(model, ids), ref, rtol=0, atol=1e-6)

    import coloc_ray.garfa.patch as patch_mod

    used = []
    real = patch_mod.key_cos_sin
    monkeypatch.setattr(patch_mod, "key_cos_sin", lambda inv, *a, **k: (used.append(inv.detach()), real(inv, *a, **k))[1])
    rho = torch.tensor([[0.4, -0.9], [1.1, 0.2]])
    with torch.no_grad():
        scalers.rho.copy_(rho)
    x, y = capture_attention(model, 2, ids)
    alpha = torch.exp(math.log(4) * torch.tanh(rho.double()))
    d = model.config.head_dim
    expo = torch.tensor([-2.0 * i / d for i in range(d // 2)], dtype=torch.float64)
    for row, inv_used in enumerate(used[:2]):  # layers 1 and 2, in order
        want = own[None, :] * alpha[row][:, None] ** expo[None, :]
        torch.testing.assert_close(inv_used.double(), want, rtol=1e-6, atol=0)
    attn = decoder_layers(model)[2].self_attn
    got = garfa_attention_reference(attn, x, own, alpha[1])
    torch.testing.assert_close(y.double(), got, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", ["mistral", "qwen2"])
def test_sliding_window_follows_the_model(ids, model_type):
    extra = {"sliding_window": 5}
    if model_type == "qwen2":
        extra.update(use_sliding_window=True, max_window_layers=0)
    model = sharpen(build_tiny_cfg(model_type, impl="eager", **extra))
    ref = _logits(model, ids)
    scalers = apply_garfa(model, [1, 3])
    torch.testing.assert_close(_logits(model, ids), ref, rtol=0, atol=1e-6)
    with torch.no_grad():
        scalers.rho.copy_(torch.tensor([[0.5, -0.5], [1.0, -1.0]]))
    x, y = capture_attention(model, 3, ids)
    alpha = torch.exp(math.log(4) * torch.tanh(torch.tensor([1.0, -1.0], dtype=torch.float64)))
    attn = decoder_layers(model)[3].self_attn
    want = garfa_attention_reference(attn, x, _base_inv_freq(model), alpha, window=5)
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-5)
    full = garfa_attention_reference(attn, x, _base_inv_freq(model), alpha, window=None)
    assert (full - want).abs().max() > 1e-3  # the window really masks something here
    remove_garfa(model)


def test_peft_lora_stays_in_the_forward(tiny_model, ids):
    from peft import LoraConfig, get_peft_model

    base = sharpen(tiny_model("tiny-gqa", "sdpa"))
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                     layers_to_transform=[1, 2], layers_pattern="layers")
    model = get_peft_model(base, cfg)
    with torch.no_grad():  # LoRA B is zero at init; make the adapters matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    ref = _logits(model, ids)
    scalers = apply_garfa(model, [1, 2])
    torch.testing.assert_close(_logits(model, ids), ref, rtol=0, atol=1e-6)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.endswith("garfa_scalers.rho") for n in names)
    model.train()
    model(ids, labels=ids).loss.backward()
    assert (scalers.rho.grad != 0).all()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    frozen = [p for n, p in model.named_parameters() if "lora_" not in n and "garfa" not in n]
    assert all(not p.requires_grad for p in frozen)


def test_bf16_model_init_parity_and_fp32_rho(ids):
    """bf16 weights (GPU training): tables are built in fp32 like HF's and cast to the key dtype."""
    model = sharpen(build_tiny_cfg("llama", impl="sdpa")).to(torch.bfloat16)
    ref = _logits(model, ids)
    scalers = apply_garfa(model, [0, 2])
    assert scalers.rho.dtype == torch.float32
    assert torch.equal(_logits(model, ids), ref)
    model.train()
    model(ids, labels=ids).loss.backward()
    assert (scalers.rho.grad != 0).all()
