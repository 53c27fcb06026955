"""The adapter guard fires on adapters that leave the model unchanged and passes on real ones."""

from __future__ import annotations

import pytest

from coloc_ray.errors import UserError
from coloc_ray.evaluation.guard import check_adapter_effect
from coloc_ray.models import load_model


def _adapted(path):
    from coloc_ray.finetune.adapter import load_adapted

    lm = load_model("tiny-gqa")
    return load_adapted(lm.model, path), lm.tokenizer


def test_guard_passes_on_random_lora_and_garfa(adapter_factory):
    model, tok = _adapted(adapter_factory(lora="random", garfa="random"))
    out = check_adapter_effect(model, tok, "a")
    assert out["lora_max_abs_logit_diff"] > 1e-4 and out["garfa_max_abs_logit_diff"] > 1e-4


def test_guard_fires_on_zero_lora(adapter_factory):
    model, tok = _adapted(adapter_factory(lora="zero", garfa="random"))
    with pytest.raises(UserError, match="LoRA part leaves the logits unchanged"):
        check_adapter_effect(model, tok, "a")


def test_guard_fires_on_zero_garfa(adapter_factory):
    model, tok = _adapted(adapter_factory(lora="random", garfa="zero"))
    with pytest.raises(UserError, match="GARFA part leaves the logits unchanged"):
        check_adapter_effect(model, tok, "a")


def test_guard_restores_rho_and_adapter_state(adapter_factory):
    import torch

    from coloc_ray.evaluation.guard import _logits
    from coloc_ray.garfa import get_garfa

    model, tok = _adapted(adapter_factory(lora="random", garfa="random"))
    before, rho = _logits(model, tok), get_garfa(model).rho.detach().clone()
    check_adapter_effect(model, tok, "a")
    assert torch.equal(get_garfa(model).rho.detach(), rho)
    assert torch.equal(_logits(model, tok), before)
