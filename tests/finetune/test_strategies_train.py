"""FSDP and ZeRO-3 wired into the fine-tune: what runs on this 2-core CPU box.

FSDP runs for real: torch FSDP on 2 ranks over gloo, on CPU, fp32 (``mixed_precision=None``: METHOD 6 trains
fp32 on CPU, and bf16 would hide a real mismatch in rounding). ZeRO-3 cannot run here (no deepspeed in
``.venv``, no GPU): its config plumbing, its engine calls (against a stand-in engine) and the missing-deepspeed
UserError are tested.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from coloc_ray.errors import UserError

HERE = Path(__file__).parent


# -- FSDP exact resume, 2 ranks over gloo (no Ray: the Loop + state.py path itself) -------------------------

def _fsdp_rank(rank: int, world: int, pg_file: str, ckpt: str, resume: bool, out: str) -> None:
    """One rank: build the tiny model, wrap it like the Ray worker does, train; write losses to ``out``."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    import torch.distributed as dist

    sys.path.insert(0, str(HERE.parent.parent))  # a spawned process: make `tests` importable
    from coloc_ray.finetune.bare import prepare
    from coloc_ray.finetune.loop import Hooks, Loop
    from coloc_ray.finetune.ray_worker import _wrap
    from tests.finetune.conftest import small_config

    dist.init_process_group("gloo", init_method=f"file://{pg_file}", rank=rank, world_size=world)
    try:
        cfg = small_config(strategy="fsdp", num_workers=world, max_steps=6, checkpoint_every=3, eval_every=100,
                           lora_dropout=0.2, data={"max_records": 60})
        prep = prepare(cfg, device="cpu")
        model, opt = _wrap(prep.trainable.model, cfg, world)

        class SaveAt3(Hooks):
            def on_checkpoint(self, loop):
                if not resume:
                    loop.save(ckpt)

        loop = Loop(model, prep.trainable.scalers, prep.train_items, prep.held_items, cfg,
                    prep.trainable.tokenizer.pad_token_id, rank=rank, world=world, hooks=SaveAt3(), optimizer=opt)
        if resume:
            loop.resume(ckpt)
        loop.run()
        with loop.full_rho():
            alpha = loop.scalers.alpha().detach().tolist()
        if rank == 0:
            torch.save({"losses": loop.state.train_losses, "alpha": alpha, "step": loop.state.step,
                        "resumed_from": loop.state.resumed_from}, out)
    finally:
        dist.destroy_process_group()


def _spawn(tmp: Path, tag: str, resume: bool) -> dict:
    import torch.multiprocessing as mp

    out = tmp / f"{tag}.pt"
    mp.spawn(_fsdp_rank, args=(2, str(tmp / f"pg-{tag}"), str(tmp / "ckpt"), resume, str(out)), nprocs=2)
    return torch.load(out, weights_only=False)


def test_fsdp_checkpoint_resume_continues_exactly(tmp_path):
    full = _spawn(tmp_path, "full", resume=False)     # 6 steps, checkpoint written at step 3
    assert (tmp_path / "ckpt" / "trainable.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
    again = _spawn(tmp_path, "again", resume=True)    # a fresh pair of ranks from the step-3 checkpoint
    assert again["resumed_from"] == [3] and again["step"] == 6
    # Same data position, LoRA/rho weights, AdamW moments, schedule and per-rank dropout stream, one thread,
    # the same op order: the continued losses equal the uninterrupted ones to float32 round-off. A lost
    # optimizer state or a replayed dropout mask moves them by > 1e-3 on this model.
    # (the history up to step 3 comes from the checkpoint; steps 4-6 are recomputed)
    assert len(again["losses"]) == 6 and again["losses"][:3] == full["losses"][:3]
    assert again["losses"][3:] == pytest.approx(full["losses"][3:], rel=1e-6)
    assert sum(again["alpha"], []) == pytest.approx(sum(full["alpha"], []), rel=1e-6)
    assert sum(full["alpha"], []) != pytest.approx([1.0] * 4, abs=1e-6)  # rho did receive gradients


# -- FSDP on Ray Train, 2 CPU workers, against DDP ------------------------------------------------------------

@pytest.mark.ray
def test_fsdp_on_ray_train_matches_ddp_and_its_adapter_loads(ray_local, small_cfg, tmp_path):
    from coloc_ray.finetune.adapter import load_adapted
    from coloc_ray.finetune.api import run_finetune
    from coloc_ray.models import load_model

    kw = dict(num_workers=2, max_steps=6, eval_every=3, checkpoint_every=3, cpus_per_worker=0.5,
              data={"max_records": 80})
    ddp = run_finetune(small_cfg(strategy="ddp", **kw), tmp_path / "ddp")
    fsdp = run_finetune(small_cfg(strategy="fsdp", **kw), tmp_path / "fsdp")
    assert fsdp["strategy"] == "fsdp" and fsdp["steps"] == 6 and fsdp["num_workers"] == 2
    # Counts of the whole model, not of rank 0's shard.
    assert (fsdp["lora_params"], fsdp["garfa_params"]) == (ddp["lora_params"], ddp["garfa_params"]) == (
        ddp["lora_params"], 4)
    # Step 1 sees identical weights and batches: equal up to float32 summation order. Later steps differ only
    # by the order of the gradient reductions (all-reduce vs reduce-scatter) and of the clip norm (per-shard
    # partial sums), ~1e-7 relative per step; 1e-4 over 6 AdamW steps leaves room for that and catches what
    # matters (unsynchronised ranks, a dropped shard, rho without gradients), each > 1e-3 here.
    assert fsdp["train_losses"][0] == pytest.approx(ddp["train_losses"][0], rel=1e-6)
    assert fsdp["train_losses"] == pytest.approx(ddp["train_losses"], rel=1e-4)
    assert [e["loss"] for e in fsdp["eval_losses"]] == pytest.approx([e["loss"] for e in ddp["eval_losses"]],
                                                                      rel=1e-4)
    assert fsdp["alpha"]["L1"] == pytest.approx(ddp["alpha"]["L1"], rel=1e-4)
    assert fsdp["alpha"]["L1"] != pytest.approx([1.0, 1.0], abs=1e-5)  # GARFA trained under FSDP too

    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(3))
    base = load_model("tiny-gqa").model
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        want = load_adapted(load_model("tiny-gqa").model, tmp_path / "ddp")(input_ids=ids).logits
        got = load_adapted(load_model("tiny-gqa").model, tmp_path / "fsdp")(input_ids=ids).logits
    assert (want - plain).abs().max() > 1e-3                     # the adapter changes the logits...
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # ...the same way from FSDP as from DDP


# -- ZeRO-3: config plumbing, engine calls, and the missing-deepspeed error ---------------------------------

def _zero3_cfg(**over):
    from tests.finetune.conftest import small_config

    return small_config(**{"strategy": "zero3", "num_workers": 2, **over})


def test_zero3_without_deepspeed_is_a_user_error(monkeypatch):
    from coloc_ray.finetune.lora import build_trainable
    from coloc_ray.finetune.ray_worker import _wrap

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` raises ImportError
    cfg = _zero3_cfg()
    with pytest.raises(UserError, match=r"needs DeepSpeed.*coloc-ray\[gpu\].*strategy fsdp"):
        _wrap(build_trainable(cfg).model, cfg, world=2)


class _FakeEngine(torch.nn.Module):
    """Stand-in for ``deepspeed.DeepSpeedEngine`` with the semantics the loop relies on (DeepSpeed 0.19 docs):
    ``backward`` scales the loss by 1/gradient_accumulation_steps, ``step`` is called every micro-batch and
    clips to ``gradient_clipping`` + steps the optimizer only at the accumulation boundary."""

    def __init__(self, module, optimizer, config):
        super().__init__()
        self.module, self.optimizer, self.config = module, optimizer, config
        self.micro, self.norm, self.saved = 0, None, []

    def forward(self, **kw):
        return self.module(**kw)

    def backward(self, loss):
        (loss / self.config["gradient_accumulation_steps"]).backward()

    def step(self):
        self.micro += 1
        if self.micro % self.config["gradient_accumulation_steps"] == 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            self.norm = torch.nn.utils.clip_grad_norm_(params, self.config["gradient_clipping"])
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def get_global_grad_norm(self):
        return self.norm

    def save_checkpoint(self, save_dir, tag=None, exclude_frozen_parameters=False):
        self.saved.append((save_dir, tag, exclude_frozen_parameters))


_FakeEngine.__name__ = "DeepSpeedEngine"  # the loop recognises the engine by its class name (no import)


@pytest.fixture()
def fake_deepspeed(monkeypatch):
    import contextlib
    import types

    calls = {}

    def initialize(model, optimizer, config, model_parameters):
        calls.update(model=model, optimizer=optimizer, config=config, model_parameters=model_parameters)
        return _FakeEngine(model, optimizer, config), optimizer, None, None

    def register_external_parameter(module, param):
        calls.setdefault("external", []).append((module, param))

    zero = types.SimpleNamespace(GatheredParameters=lambda params, modifier_rank=None: contextlib.nullcontext(),
                                 register_external_parameter=register_external_parameter)
    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(initialize=initialize, zero=zero))
    return calls


def test_zero3_wrap_passes_our_config_and_optimizer_groups(fake_deepspeed):
    from coloc_ray.finetune.lora import build_trainable
    from coloc_ray.finetune.ray_worker import _wrap
    from coloc_ray.finetune.strategies import zero3_config_for
    from coloc_ray.models import decoder_layers

    cfg = _zero3_cfg(batch_size=3, grad_accum=5, max_grad_norm=0.7)
    tm = build_trainable(cfg)
    engine, opt = _wrap(tm.model, cfg, world=2)
    ds = fake_deepspeed["config"]
    assert ds == zero3_config_for(cfg, bf16=False)  # no CUDA here: fp32, as METHOD 6 trains on CPU
    assert ds["train_batch_size"] == 3 * 5 * 2 and ds["gradient_clipping"] == 0.7
    trainable = {id(p) for p in tm.model.parameters() if p.requires_grad}
    assert {id(p) for p in fake_deepspeed["model_parameters"]} == trainable
    assert opt is fake_deepspeed["optimizer"]  # the plain AdamW the scheduler drives
    # rho is read inside GARFA layers 1 and 3's attention: registered there so ZeRO-3 gathers it for them.
    blocks = decoder_layers(tm.model)
    assert [(id(m), id(p)) for m, p in fake_deepspeed["external"]] == [
        (id(blocks[1].self_attn), id(tm.scalers.rho)), (id(blocks[3].self_attn), id(tm.scalers.rho))]
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["garfa"]["lr"] == pytest.approx(cfg.garfa_lr_ratio * groups["lora"]["lr"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)


def test_loop_drives_the_zero3_engine_like_the_plain_loop(fake_deepspeed, tmp_path):
    """The loop's ZeRO-3 branch (engine backward/step each micro-batch, no double 1/accum scaling, our
    scheduler, the engine's norm) trains exactly what the plain single-process loop trains."""
    from coloc_ray.finetune.bare import prepare
    from coloc_ray.finetune.loop import Loop
    from coloc_ray.finetune.ray_worker import _wrap

    cfg = _zero3_cfg(num_workers=2, max_steps=3, eval_every=100, checkpoint_every=100, data={"max_records": 40})
    runs = {}
    for strategy in ("ddp", "zero3"):
        prep = prepare(cfg.model_copy(update={"strategy": strategy}))
        model, opt = _wrap(prep.trainable.model, cfg, 2) if strategy == "zero3" else (prep.trainable.model, None)
        loop = Loop(model, prep.trainable.scalers, prep.train_items, prep.held_items, cfg,
                    prep.trainable.tokenizer.pad_token_id, optimizer=opt)
        assert loop.strategy == strategy
        loop.run()
        runs[strategy] = (loop.state.train_losses, loop.alpha_metrics())
        if strategy == "zero3":
            loop.save(tmp_path)
            assert model.saved == [(str(tmp_path), "zero3", True)]  # engine checkpoint, no frozen base
    assert runs["zero3"][0] == runs["ddp"][0] and len(runs["ddp"][0]) == 3
    assert runs["zero3"][1] == runs["ddp"][1]


def test_quant_resolution_per_strategy():
    from coloc_ray.finetune.api import validate
    from coloc_ray.finetune.lora import resolve_quant

    assert resolve_quant("auto", cuda=True, strategy="zero3") == "none"
    assert resolve_quant("auto", cuda=True, strategy="fsdp") == "4bit"
    assert resolve_quant("4bit", cuda=True, strategy="fsdp") == "4bit"
    with pytest.warns(UserWarning, match="FSDP with a 4-bit base needs CUDA"):
        assert resolve_quant("4bit", cuda=False, strategy="fsdp") == "none"
    assert resolve_quant("4bit", cuda=False, strategy="ddp") == "4bit"
    with pytest.raises(UserError, match="ZeRO-3 cannot shard bitsandbytes 4-bit"):
        validate(_zero3_cfg(quant="4bit"))
