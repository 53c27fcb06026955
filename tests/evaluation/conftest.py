"""Tiny LS-LoRA + GARFA adapters made in-process with PEFT and coloc_ray.garfa (zero or random weights)."""

from __future__ import annotations

import pytest
import torch

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(out_dir, *, lora: str = "random", garfa: str | None = "random", model_name: str = "tiny-gqa"):
    """Save an adapter for ``model_name``: lora/garfa each 'zero' (B = 0, rho = 0), 'random' or None."""
    from peft import LoraConfig, get_peft_model

    from coloc_ray.finetune.adapter import save_adapter
    from coloc_ray.garfa import apply_garfa
    from coloc_ray.models import load_model

    lm = load_model(model_name)
    model = lm.model
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=PROJ, layers_to_transform=[1, 2],
                                                 layers_pattern="layers", lora_dropout=0.0))
        if lora == "random":
            gen = torch.Generator().manual_seed(0)
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.data = torch.randn(p.shape, generator=gen) * 0.1
    scalers = None
    if garfa:
        scalers = apply_garfa(model, [0, 3])
        if garfa == "random":
            scalers.rho.data = torch.tensor([[0.8, -0.6], [0.5, 1.0]])
    save_adapter(model, scalers, lm.info, out_dir)
    return out_dir


@pytest.fixture()
def adapter_factory(tmp_path):
    counter = iter(range(100))

    def _make(**kw):
        return make_adapter(tmp_path / f"adapter{next(counter)}", **kw)

    return _make
