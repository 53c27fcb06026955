"""LS-LoRA on each family's own projection names (and the MoE experts, router untouched), exactly on the chosen
layers; gradients reach LoRA and GARFA; the adapter round trip restores the logits."""

from __future__ import annotations

import re

import pytest
import torch

from coloc_ray.errors import UserError
from coloc_ray.finetune.adapter import load_adapted, save_adapter
from coloc_ray.finetune.lora import build_trainable, lora_placement, param_groups, trainable_counts
from coloc_ray.models import load_model
from tests.families.conftest import NEW_FAMILIES
from tests.finetune.conftest import small_config

SEVEN = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
ATTN = {"q_proj", "k_proj", "v_proj", "o_proj"}
PHI = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}  # Phi-3's four fused modules
EXPERTS = {"experts.gate_up_proj", "experts.down_proj"}
LAYER = re.compile(r"\.layers\.(\d+)\.(.+)\.lora_[AB]\.")


def _expected(alias: str, layers: list[int]) -> dict[int, set[str]]:
    if alias == "tiny-phi3":
        return {l: PHI for l in layers}
    if alias == "tiny-qwen3-moe":  # attention modules + both expert parameters (4 experts each)
        return {l: ATTN | EXPERTS for l in layers}
    return {l: SEVEN for l in layers}


def _cfg(alias: str, **over):
    kw = dict(model=alias, lora_layers=[0, 2], garfa_layers=[1, 2], lora_r=4, lora_alpha=8.0)
    if alias == "tiny-qwen3-moe":
        kw["lora_dropout"] = 0.0
    kw.update(over)
    return small_config(**kw)


@pytest.mark.parametrize("alias", list(NEW_FAMILIES))
def test_lora_exactly_on_the_chosen_layers_projections(alias):
    tm = build_trainable(_cfg(alias, garfa_layers=[]))
    assert lora_placement(tm.model) == _expected(alias, [0, 2])
    # Independently of lora_placement: every trainable tensor is a LoRA factor inside layer 0 or 2, never the router.
    names = [n for n, p in tm.model.named_parameters() if p.requires_grad]
    seen = set()
    for n in names:
        m = LAYER.search(n)
        assert m and int(m.group(1)) in (0, 2), n
        assert ".mlp.gate." not in n + "." and "router" not in n, n
        seen.add(int(m.group(1)))
    assert seen == {0, 2}
    if alias == "tiny-phi3":  # hand count over the fused modules: r * (in + out) each
        c, r = tm.model.config, 4
        h, i, qkv = c.hidden_size, c.intermediate_size, (c.num_attention_heads + 2 * c.num_key_value_heads) * 16
        per_layer = r * ((h + qkv) + (h + h) + (h + 2 * i) + (i + h))
        assert trainable_counts(tm.model)["lora_params"] == 2 * per_layer
    if alias == "tiny-qwen3-moe":  # rank r per expert on each expert parameter, r * (in + out) per projection
        c, r, e, i = tm.model.config, 4, 4, 32
        h, q, kv = c.hidden_size, c.num_attention_heads * 16, c.num_key_value_heads * 16
        attn = r * ((h + q) + 2 * (h + kv) + (q + h))
        experts = e * r * ((h + 2 * i) + (i + h))
        assert trainable_counts(tm.model)["lora_params"] == 2 * (attn + experts)


def test_moe_router_weights_stay_frozen_and_experts_learn():
    tm = build_trainable(_cfg("tiny-qwen3-moe"))
    model = tm.model
    with torch.no_grad():  # LoRA B is zero at init; make the adapters matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    lora, garfa = param_groups(model)  # raises if anything else is trainable
    assert garfa[0].grad is not None and (garfa[0].grad != 0).any()
    expert_grads = [p.grad for n, p in model.named_parameters() if "experts" in n and "lora_A" in n]
    assert expert_grads and all(g is not None and g.abs().sum() > 0 for g in expert_grads)
    routers = [p for n, p in model.named_parameters() if ".mlp.gate." in n]
    assert routers and all(not p.requires_grad and p.grad is None for p in routers)


def test_moe_lora_with_dropout_is_a_user_error():
    with pytest.raises(UserError, match="lora_dropout"):
        build_trainable(small_config(model="tiny-qwen3-moe", lora_layers=[1], garfa_layers=[]))


@pytest.mark.parametrize("alias", list(NEW_FAMILIES))
def test_adapter_round_trip_restores_logits(alias, tmp_path):
    tm = build_trainable(_cfg(alias))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in tm.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        tm.scalers.rho.copy_(torch.randn(tm.scalers.rho.shape, generator=g))
    tm.model.eval()
    ids = torch.randint(0, 250, (1, 24), generator=g)
    with torch.no_grad():
        want = tm.model(input_ids=ids).logits
        base = load_model(alias, device="cpu").model(input_ids=ids).logits
    assert (want - base).abs().max() > 1e-3
    save_adapter(tm.model, tm.scalers, tm.info, tmp_path / "adapter")
    restored = load_adapted(load_model(alias, device="cpu").model, tmp_path / "adapter")
    with torch.no_grad():
        got = restored(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
