"""apply / get / remove: reversibility and the user errors."""

import pytest
import torch

from coloc_ray.errors import UserError
from coloc_ray.garfa import GarfaScalers, apply_garfa, get_garfa, remove_garfa
from coloc_ray.models import decoder_layers
from tests.garfa.conftest import build_tiny_cfg, sharpen


def test_remove_restores_forward_and_logits_exactly(tiny_model, ids):
    model = sharpen(tiny_model("tiny-gqa", "sdpa"))
    with torch.no_grad():
        ref = model(ids).logits
    attns = [b.self_attn for b in decoder_layers(model)]
    originals = [a.forward for a in attns]
    scalers = apply_garfa(model, [0, 3])
    assert get_garfa(model) is scalers and model.garfa_scalers is scalers
    assert "forward" in attns[0].__dict__ and "forward" not in attns[1].__dict__
    with torch.no_grad():
        scalers.rho.fill_(1.3)
        assert not torch.allclose(model(ids).logits, ref)
    assert remove_garfa(model) is scalers
    assert get_garfa(model) is None and not any("garfa" in n for n, _ in model.named_parameters())
    for a, orig in zip(attns, originals):
        assert "forward" not in a.__dict__ and not hasattr(a, "_garfa_link")
        assert a.forward.__func__ is type(a).forward and a.forward == orig
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
    assert remove_garfa(model) is None  # idempotent


def test_remove_restores_an_instance_forward_override(tiny_model):
    model = tiny_model()
    attn = decoder_layers(model)[1].self_attn
    custom = attn.forward  # someone else's per-instance override (e.g. another patch) must survive
    attn.forward = custom
    apply_garfa(model, [1])
    assert attn.forward is not custom
    remove_garfa(model)
    assert attn.__dict__["forward"] is custom


def test_patched_model_survives_deepcopy_and_pickle(tiny_model, ids):
    import copy
    import pickle

    model = sharpen(tiny_model())
    scalers = apply_garfa(model, [0, 2])
    with torch.no_grad():
        scalers.rho.fill_(0.8)
        ref = model(ids).logits
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        link = decoder_layers(clone)[2].self_attn._garfa_link
        assert get_garfa(clone) is link.scalers and link.scalers is not scalers
        with torch.no_grad():
            assert torch.equal(clone(ids).logits, ref)
        remove_garfa(clone)
        assert all("forward" not in b.self_attn.__dict__ for b in decoder_layers(clone))


def test_scalers_are_registered_and_sorted(tiny_model):
    model = tiny_model()
    s = apply_garfa(model, [3, 0], c=0.5)
    assert isinstance(s, GarfaScalers) and s.layers == (0, 3) and s.c == 0.5
    assert dict(model.named_parameters())["garfa_scalers.rho"] is s.rho
    assert s.rho.requires_grad and torch.equal(s.rho, torch.zeros(2, 2))


def test_empty_layer_set_patches_nothing(tiny_model, ids):
    model = tiny_model()
    s = apply_garfa(model, [])
    assert s.rho.shape == (0, 2)
    assert all("forward" not in b.self_attn.__dict__ for b in decoder_layers(model))


@pytest.mark.parametrize("layers,match", [
    ([4], "layer 4 is out of range.*4 layers"),
    ([-1], "layer -1 is out of range"),
    ([1, 2, 1], "layer 1 appears twice"),
    ([0.5], "layer 0.5 .*not an integer"),
    ([True], "not an integer"),
    ("01", "give a list"),
])
def test_bad_layers_are_user_errors(tiny_model, layers, match):
    model = tiny_model()
    with pytest.raises(UserError, match=match):
        apply_garfa(model, layers)
    assert get_garfa(model) is None  # nothing half-applied
    assert all("forward" not in b.self_attn.__dict__ for b in decoder_layers(model))


def test_unsupported_family_and_double_apply_are_user_errors(tiny_model):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UserError, match="model_type 'gpt2'.*supported: gemma2, gemma3_text, llama, mistral, phi3, qwen2, qwen3, qwen3_moe"):
        apply_garfa(gpt2, [0])
    model = tiny_model()
    apply_garfa(model, [0])
    with pytest.raises(UserError, match="already has GARFA"):
        apply_garfa(model, [1])


def test_mha_model_gets_one_scaler_per_head():
    model = build_tiny_cfg("llama", kv=4)
    assert apply_garfa(model, [0]).rho.shape == (1, 4)
