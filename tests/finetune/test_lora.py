"""LS-LoRA placement, trainable counts, and the QLoRA (4-bit NF4) path on tiny-gqa."""

from __future__ import annotations

import re

import pytest
import torch

from coloc_ray.finetune.lora import LORA_TARGETS, build_trainable, lora_placement, param_groups, trainable_counts

PATTERN = re.compile(r"\.layers\.(\d+)\..*\.(\w+_proj)$")


def _lora_modules(model) -> set[tuple[int, str]]:
    """Independent of lora_placement: scan module names for PEFT LoRA layers."""
    from peft.tuners.lora import LoraLayer

    out = set()
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer):
            m = PATTERN.search(name)
            assert m, f"LoRA module outside a decoder layer projection: {name}"
            out.add((int(m.group(1)), m.group(2)))
    return out


@pytest.mark.parametrize("layers", [[0, 2], [3], [0, 1, 2, 3]])
def test_lora_sits_on_the_seven_projections_of_exactly_the_chosen_layers(small_cfg, layers):
    tm = build_trainable(small_cfg(lora_layers=layers, garfa_layers=[]))
    expected = {(l, p) for l in layers for p in LORA_TARGETS}
    assert _lora_modules(tm.model) == expected
    assert lora_placement(tm.model) == {l: set(LORA_TARGETS) for l in layers}
    # Hand count: r * (in + out) per projection, from the model's own dimensions.
    c, r = tm.model.config, 16
    kv = c.num_key_value_heads * c.head_dim
    h, i = c.hidden_size, c.intermediate_size
    per_layer = r * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))
    assert trainable_counts(tm.model) == {"lora_params": per_layer * len(layers), "garfa_params": 0}


def test_garfa_after_peft_keeps_rho_trainable_and_groups_split(small_cfg):
    tm = build_trainable(small_cfg(lora_layers=[0], garfa_layers=[1, 3]))
    lora, garfa = param_groups(tm.model)
    assert len(garfa) == 1 and garfa[0] is tm.scalers.rho and garfa[0].requires_grad
    assert tm.scalers.rho.shape == (2, tm.info.num_kv_heads)
    assert all(p.requires_grad for p in lora) and len(lora) == 2 * 7
    base_trainable = [n for n, p in tm.model.named_parameters()
                      if p.requires_grad and "lora_" not in n and "garfa" not in n]
    assert base_trainable == []


def test_garfa_only_arm_has_no_peft_wrapper(small_cfg):
    tm = build_trainable(small_cfg(lora_layers=[], garfa_layers=[0]))
    assert not hasattr(tm.model, "peft_config")
    assert trainable_counts(tm.model) == {"lora_params": 0, "garfa_params": tm.info.num_kv_heads}


def test_qlora_4bit_step_on_tiny(small_cfg):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from coloc_ray.finetune.data import collate

    tm = build_trainable(small_cfg(quant="4bit", lora_layers=[1], garfa_layers=[2]))
    assert tm.quant == "4bit"
    base_q = tm.model.base_model.model.model.layers[1].self_attn.q_proj.base_layer
    assert isinstance(base_q, bnb.nn.Linear4bit) and base_q.weight.quant_type == "nf4"
    lora, garfa = param_groups(tm.model)
    before = [p.detach().clone() for p in lora]
    opt = torch.optim.AdamW([{"params": lora, "lr": 1e-2}, {"params": garfa, "lr": 1e-2}])
    ids = list(range(20, 60))
    out = tm.model(**collate([{"input_ids": ids, "labels": ids}] * 2, pad_id=0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert tm.scalers.rho.grad is not None and tm.scalers.rho.grad.abs().sum() > 0
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, lora))
    assert not torch.equal(tm.scalers.rho.detach(), torch.zeros_like(tm.scalers.rho))
