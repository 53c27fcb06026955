"""Adapter round trip (LoRA + GARFA) and refusal of adapters made for another model."""

from __future__ import annotations

import pytest
import torch

from coloc_ray.errors import UserError
from coloc_ray.finetune.adapter import load_adapted, save_adapter
from coloc_ray.finetune.bare import prepare
from coloc_ray.finetune.loop import Loop
from coloc_ray.models import load_model


@pytest.fixture()
def trained_adapter(small_cfg, tmp_path):
    cfg = small_cfg(max_steps=6, lr=1e-2)
    prep = prepare(cfg)
    tm = prep.trainable
    Loop(tm.model, tm.scalers, prep.train_items, prep.held_items, cfg, tm.tokenizer.pad_token_id).run()
    save_adapter(tm.model, tm.scalers, tm.info, tmp_path / "adapter")
    tm.model.eval()
    return tm, tmp_path / "adapter"


def test_round_trip_restores_identical_logits_and_no_pickle(trained_adapter):
    tm, path = trained_adapter
    ids = torch.tensor([list(range(30, 70))])
    with torch.no_grad():
        want = tm.model(input_ids=ids).logits
        base = load_model("tiny-gqa").model(input_ids=ids).logits
    assert (want - base).abs().max() > 1e-3  # training changed the model, so the check below means something
    restored = load_adapted(load_model("tiny-gqa").model, path)
    with torch.no_grad():
        got = restored(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    files = {p.name for p in path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "garfa.safetensors", "garfa.json",
            "model_info.json"} <= files
    assert not [f for f in files if f.endswith((".pt", ".bin", ".pkl", ".pth"))]


def test_top_level_reexport(trained_adapter):
    import coloc_ray

    _, path = trained_adapter
    m = coloc_ray.load_adapted(load_model("tiny-gqa").model, path)
    assert hasattr(m, "peft_config")


@pytest.mark.parametrize("other, key", [("tiny-qwen2", "model_type"), ("tiny-mha", "num_layers")])
def test_adapter_for_another_model_is_refused(trained_adapter, other, key):
    _, path = trained_adapter
    with pytest.raises(UserError, match=rf"{key}=.*load it into the model it was trained on"):
        load_adapted(load_model(other).model, path)


def test_not_an_adapter_dir_is_refused(tmp_path):
    with pytest.raises(UserError, match="model_info.json"):
        load_adapted(load_model("tiny-gqa").model, tmp_path)
