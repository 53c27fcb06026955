"""Fixtures of the fine-tune tests: a small, fast FinetuneConfig on tiny-gqa."""

from __future__ import annotations

import pytest


def small_config(**over):
    """A config that trains tiny-gqa for a handful of steps on ~200 offline records (seconds on one core)."""
    from coloc_ray.finetune.config import FinetuneConfig

    base = dict(model="tiny-gqa", lora_layers=[0, 2], garfa_layers=[1, 3], max_steps=8, batch_size=2,
                grad_accum=2, max_len=192, lr=2e-3, quant="none", eval_every=4, checkpoint_every=4, log_every=4,
                heldout_fraction=0.05, cpus_per_worker=1, tracking=False, data={"max_records": 200})
    base.update(over)
    return FinetuneConfig(**base)


@pytest.fixture()
def small_cfg():
    return small_config
