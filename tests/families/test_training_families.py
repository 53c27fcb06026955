"""The training loop on each family: a few real steps on the offline data (chat template, assistant mask), and a
resume from a mid-run checkpoint that replays the uninterrupted run exactly (LoRA, GARFA, optimizer, RNG)."""

from __future__ import annotations

import pytest
import torch

from coloc_ray.finetune.bare import prepare
from coloc_ray.finetune.loop import Hooks, Loop
from tests.families.conftest import NEW_FAMILIES
from tests.finetune.conftest import small_config


def _cfg(alias):
    return small_config(model=alias, lora_layers=[0, 2], garfa_layers=[1, 2], max_steps=4, checkpoint_every=2,
                        eval_every=2, batch_size=2, grad_accum=1, max_len=160, lora_r=4,
                        lora_dropout=0.0 if alias == "tiny-qwen3-moe" else 0.3, data={"max_records": 60})


def _loop(cfg, hooks=None):
    prep = prepare(cfg)
    tm = prep.trainable
    return Loop(tm.model, tm.scalers, prep.train_items, prep.held_items, cfg, tm.tokenizer.pad_token_id,
                hooks=hooks)


class _Crash(Exception):
    pass


class _SaveAndCrash(Hooks):
    def __init__(self, d):
        self.d = d

    def on_checkpoint(self, loop):
        loop.save(self.d)
        raise _Crash


@pytest.mark.parametrize("alias", list(NEW_FAMILIES))
def test_resume_from_checkpoint_replays_the_run_exactly(alias, tmp_path):
    cfg = _cfg(alias)
    ref = _loop(cfg)
    ref.run()
    assert any(abs(float(a) - 1.0) > 1e-6 for a in ref.scalers.alpha().flatten())  # GARFA trained
    crashed = _loop(cfg, _SaveAndCrash(tmp_path))
    with pytest.raises(_Crash):
        crashed.run()
    resumed = _loop(cfg)
    resumed.resume(tmp_path)
    assert resumed.state.step == 2
    resumed.run()
    assert resumed.state.train_losses == ref.state.train_losses
    assert resumed.state.eval_losses == ref.state.eval_losses
    assert torch.equal(resumed.scalers.rho, ref.scalers.rho)
