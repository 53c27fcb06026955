"""The plain loop: optimizer groups and schedule, loss falls, exact in-process resume."""

from __future__ import annotations

import math

import pytest
import torch

from coloc_ray.finetune.bare import prepare, run_bare
from coloc_ray.finetune.loop import Hooks, Loop


def _loop(cfg, hooks=None):
    prep = prepare(cfg)
    tm = prep.trainable
    return Loop(tm.model, tm.scalers, prep.train_items, prep.held_items, cfg, tm.tokenizer.pad_token_id,
                hooks=hooks)


def _hand_lr(peak, step, warmup, total):
    """METHOD 6 by hand: linear warm-up to the peak, then cosine decay to 0."""
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_two_groups_with_their_own_lr_decay_and_schedule(small_cfg):
    cfg = small_cfg(max_steps=100, lr=3e-4, garfa_lr_ratio=5.0, weight_decay=0.01)
    loop = _loop(cfg)
    groups = {g["name"]: g for g in loop.optimizer.param_groups}
    assert set(groups) == {"lora", "garfa"}
    assert groups["garfa"]["params"] == [loop.scalers.rho]
    assert groups["lora"]["weight_decay"] == 0.01 and groups["garfa"]["weight_decay"] == 0.0
    warmup = math.ceil(0.03 * 100)
    for step in range(0, 100):
        for name, peak in (("lora", 3e-4), ("garfa", 1.5e-3)):
            assert groups[name]["lr"] == pytest.approx(_hand_lr(peak, step, warmup, 100), rel=1e-9, abs=1e-15)
        loop.optimizer.step()
        loop.scheduler.step()


def test_heldout_loss_falls_on_tiny_data(small_cfg):
    m = run_bare(small_cfg(max_steps=16, eval_every=8))
    first, last = m["eval_losses"][0], m["eval_losses"][-1]
    assert first["step"] == 0 and last["step"] == 16
    assert last["loss"] < first["loss"] - 0.1, m["eval_losses"]
    assert m["steps"] == 16 and m["tokens"] > 0 and m["tokens_per_s"] > 0
    assert set(m["alpha"]) == {"L1", "L3"} and any(abs(a - 1) > 1e-4 for a in m["alpha"]["L1"])


class _Crash(Exception):
    pass


class _SaveAndCrash(Hooks):
    def __init__(self, d):
        self.d = d

    def on_checkpoint(self, loop):
        loop.save(self.d)
        raise _Crash


def test_resume_from_checkpoint_replays_the_uninterrupted_run_exactly(small_cfg, tmp_path):
    cfg = small_cfg(max_steps=8, checkpoint_every=3, lora_dropout=0.3)  # dropout: the RNG must be restored too
    ref = _loop(cfg)
    ref.run()
    crashed = _loop(cfg, _SaveAndCrash(tmp_path))
    with pytest.raises(_Crash):
        crashed.run()
    resumed = _loop(cfg)
    resumed.resume(tmp_path)
    assert (resumed.state.step, resumed.state.micro) == (3, 3 * cfg.grad_accum)
    resumed.run()
    # Same process, same thread count, same op order: bit-identical, not merely close.
    assert resumed.state.train_losses == ref.state.train_losses
    assert resumed.state.eval_losses == ref.state.eval_losses
    assert torch.equal(resumed.scalers.rho, ref.scalers.rho)
    assert resumed.state.resumed_from == [3]
