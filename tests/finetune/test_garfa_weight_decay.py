"""GARFA's weight decay follows METHOD 6 (0.01 for both AdamW groups) and reaches the optimizer."""

from __future__ import annotations

import torch

from coloc_ray.finetune.config import FinetuneConfig
from coloc_ray.finetune.loop import build_optimizer


class _Tiny(torch.nn.Module):
    """Parameter names as param_groups sorts them: one LoRA matrix, one GARFA scaler vector."""

    def __init__(self):
        super().__init__()
        self.lora_A = torch.nn.Parameter(torch.zeros(2, 2))
        self.garfa_scalers = torch.nn.Parameter(torch.zeros(2))


def test_default_decay_is_methods_for_both_groups():
    cfg = FinetuneConfig.model_construct(**{k: f.default for k, f in FinetuneConfig.model_fields.items()})
    assert cfg.weight_decay == 0.01 and cfg.garfa_weight_decay == 0.01
    opt = build_optimizer(_Tiny(), cfg)
    decay = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decay == {"lora": 0.01, "garfa": 0.01}
