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
    assert groups["lora"]["weight_decay"] == 0.01 and groups["garfa"]["weight_decay"] == 0.01  # METHOD 6: both
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


# -- per-record held-out losses --------------------------------------------------------------------------------

def _direct_record_loss(model, item) -> float:
    """Independent reference: HF's own causal-LM loss of one record alone (no padding, no batching)."""
    ids = torch.tensor([item["input_ids"]])
    with torch.no_grad():
        return float(model(input_ids=ids, labels=torch.tensor([item["labels"]])).loss)


def test_heldout_record_losses_equal_each_records_own_loss(small_cfg):
    from coloc_ray.finetune.bare import final_metrics

    cfg = small_cfg(max_steps=4, batch_size=3, data={"max_records": 60})  # 3 held-out records per batch: padding
    prep = prepare(cfg)
    tm = prep.trainable
    loop = Loop(tm.model, tm.scalers, prep.train_items, prep.held_items, cfg, tm.tokenizer.pad_token_id)
    loop.run()
    m = final_metrics(loop, tm, 0.0)
    got, ntok = m["heldout_record_losses"], m["heldout_record_tokens"]
    held = loop.held_items
    assert len(held) >= 4 and sorted(got) == sorted(ex["id"] for ex in held)
    assert all(":" in rid for rid in got)  # "<dataset>:<index in the source>", stable across runs
    loop.model.eval()
    for ex in held:
        assert got[ex["id"]] == pytest.approx(_direct_record_loss(loop.model, ex), rel=1e-5)
        assert ntok[ex["id"]] == sum(1 for l in ex["labels"][1:] if l != -100)
    # final_eval_loss stays the token-weighted mean over the same records, at the final step.
    want = sum(got[r] * ntok[r] for r in got) / sum(ntok.values())
    assert m["final_eval_loss"] == pytest.approx(want, rel=1e-12)
    assert m["eval_losses"][-1]["step"] == 4 and len({e["step"] for e in m["eval_losses"]}) == len(m["eval_losses"])
    assert len(set(got.values())) == len(got)  # real per-record values, not one number repeated
    # Step 0 is the base model: the unpatched tiny model, loaded afresh, gives the same per-record losses.
    from coloc_ray.models import load_model

    base = load_model("tiny-gqa").model.eval()
    step0 = m["heldout_record_losses_step0"]
    assert sorted(step0) == sorted(got)
    for ex in held:
        assert step0[ex["id"]] == pytest.approx(_direct_record_loss(base, ex), rel=1e-5)
        assert abs(step0[ex["id"]] - got[ex["id"]]) > 1e-4  # and training moved every record's loss


def test_heldout_records_do_not_depend_on_arm_or_training_seed(small_cfg):
    a = prepare(small_cfg(seed=0, lora_layers=[0, 2], garfa_layers=[1, 3]))
    b = prepare(small_cfg(seed=7, lora_layers=[1], garfa_layers=[0]))
    assert [ex["id"] for ex in a.held_items] == [ex["id"] for ex in b.held_items]
    assert [ex["input_ids"] for ex in a.held_items] == [ex["input_ids"] for ex in b.held_items]
    assert sorted(ex["id"] for ex in a.train_items) == sorted(ex["id"] for ex in b.train_items)


def _ddp_rank(rank: int, world: int, pg_file: str, out: str) -> None:
    """One DDP rank over gloo (no Ray: the Loop itself); writes its per-record losses and, rank 0, the weights."""
    import os
    import sys
    from pathlib import Path

    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    import torch.distributed as dist

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # a spawned process: import `tests`
    from tests.finetune.conftest import small_config

    dist.init_process_group("gloo", init_method=f"file://{pg_file}", rank=rank, world_size=world)
    try:
        cfg = small_config(num_workers=world, max_steps=2, eval_every=100, data={"max_records": 40})
        prep = prepare(cfg, device="cpu")
        model = torch.nn.parallel.DistributedDataParallel(prep.trainable.model, find_unused_parameters=False)
        loop = Loop(model, prep.trainable.scalers, prep.train_items, prep.held_items, cfg,
                    prep.trainable.tokenizer.pad_token_id, rank=rank, world=world)
        loop.run()
        weights = {n: p.detach().clone() for n, p in prep.trainable.model.named_parameters() if p.requires_grad}
        torch.save({"losses": loop.record_losses, "weights": weights if rank == 0 else None}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_give_the_per_record_losses_one_worker_gives(small_cfg, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "pg"), str(tmp_path / "out")), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"out.{r}", weights_only=False) for r in (0, 1))
    assert r0["losses"] == r1["losses"]  # both ranks evaluate all held-out records with the same weights
    # One worker, the same trained weights, the same config: the same records and losses.
    cfg = small_cfg(max_steps=2, eval_every=100, data={"max_records": 40})
    one = _loop(cfg)
    trained = dict(one.model.named_parameters())
    with torch.no_grad():
        for n, w in r0["weights"].items():
            trained[n].copy_(w)
    one.evaluate()
    assert sorted(one.record_losses) == sorted(r0["losses"])
    assert r0["losses"] == pytest.approx(one.record_losses, rel=1e-6)
    base = _loop(cfg)
    base.evaluate()  # the untrained start: training moved every record's loss
    assert all(abs(base.record_losses[r] - r0["losses"][r]) > 1e-4 for r in r0["losses"])
