"""FinetuneConfig: METHOD defaults, layer-set validation against the model, YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from coloc_ray.errors import UserError
from coloc_ray.finetune.config import FinetuneConfig, load_yaml, parse_config

DEMO = Path(__file__).resolve().parents[2] / "coloc_ray" / "configs" / "finetune_demo.yaml"


def test_defaults_are_method_4_and_6():
    cfg = FinetuneConfig(model="m", lora_layers=[1], garfa_layers=[])
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (16, 32.0, 0.05)
    assert (cfg.lr, cfg.garfa_lr_ratio, cfg.weight_decay, cfg.warmup_ratio) == (2e-4, 5.0, 0.01, 0.03)
    assert (cfg.batch_size, cfg.grad_accum, cfg.max_steps, cfg.max_len) == (4, 4, 3000, 1024)
    assert cfg.heldout_fraction == 0.02 and cfg.quant == "auto" and cfg.strategy == "ddp"


def test_every_field_has_a_description():
    for model in (FinetuneConfig, FinetuneConfig.model_fields["data"].annotation):
        missing = [n for n, f in model.model_fields.items() if not f.description]
        assert not missing, missing


@pytest.mark.parametrize("over, words", [
    ({"lora_layers": [0, 4]}, ["lora_layers", "[4]", "0..3"]),
    ({"garfa_layers": [1, 1]}, ["garfa_layers", "duplicate", "[1]"]),
    ({"lora_layers": [0, 1, 2, 3, 0]}, ["lora_layers", "5 layers", "at most 4"]),
    ({"lora_layers": [], "garfa_layers": []}, ["both empty"]),
    ({"garfa_layers": [-1]}, ["garfa_layers", "[-1]"]),
])
def test_layer_sets_checked_against_depth(over, words):
    cfg = FinetuneConfig(**{"model": "tiny-gqa", "lora_layers": [0], "garfa_layers": [1], **over})
    with pytest.raises(UserError) as e:
        cfg.check_layers(4)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("lora, garfa", [([], [3]), ([0, 1, 2, 3], [])])
def test_one_empty_set_is_allowed(lora, garfa):
    cfg = parse_config({"model": "tiny-gqa", "lora_layers": lora, "garfa_layers": garfa})
    cfg.check_layers(4)  # no UserError
    assert (cfg.lora_layers, cfg.garfa_layers) == (lora, garfa)  # the empty set stays empty, nothing filled in
    saved = parse_config(cfg.model_dump())  # what config.json holds and a resumed run reads back
    assert (saved.lora_layers, saved.garfa_layers) == (lora, garfa)


def test_unknown_key_and_bad_value_name_the_key():
    with pytest.raises(UserError, match="lora_rank"):
        parse_config({"model": "m", "lora_layers": [], "garfa_layers": [1], "lora_rank": 8})
    with pytest.raises(UserError, match=r"quant.*'8bit'"):
        parse_config({"model": "m", "lora_layers": [], "garfa_layers": [1], "quant": "8bit"})


def test_shipped_demo_yaml_loads_and_fits_smollm2_depth():
    cfg = parse_config(load_yaml(DEMO), where=str(DEMO))
    cfg.check_layers(30)
    assert cfg.model == "smollm2-135m" and cfg.num_workers == 2
