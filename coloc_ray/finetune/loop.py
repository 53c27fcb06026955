"""The plain training loop (no Ray): AdamW in two groups, cosine schedule with warm-up, accumulation.

Ray Train (``ray_worker.py``) runs this same loop on each worker and plugs checkpoint reporting in
through :class:`Hooks`; the benchmark runs it bare. Determinism: the data order is a pure function of
(seed, micro-batch counter), dropout draws from torch's RNG seeded per rank, and both the counter and the
RNG state are part of every checkpoint, so a resumed run replays exactly what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Optional

import torch

from coloc_ray.finetune.data import ShardedOrder, collate
from coloc_ray.finetune.lora import param_groups
from coloc_ray.finetune.state import LoopState, load_state, save_state, sharded_io

log = logging.getLogger(__name__)


def build_optimizer(model, cfg) -> torch.optim.AdamW:
    """AdamW with a LoRA group (lr, weight_decay) and a GARFA group (ratio x lr, garfa_weight_decay)."""
    lora, garfa = param_groups(model)
    groups = []
    if lora:
        groups.append({"params": lora, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "lora"})
    if garfa:
        groups.append({"params": garfa, "lr": cfg.lr * cfg.garfa_lr_ratio,
                       "weight_decay": cfg.garfa_weight_decay, "name": "garfa"})
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)


def build_scheduler(optimizer, cfg):
    """Cosine decay to 0 after a linear warm-up of ``ceil(warmup_ratio x max_steps)`` steps."""
    from transformers import get_cosine_schedule_with_warmup

    warmup = math.ceil(cfg.warmup_ratio * cfg.max_steps)
    return get_cosine_schedule_with_warmup(optimizer, warmup, cfg.max_steps)


class Hooks:
    """Callbacks of the loop; the default does nothing. Ray's worker and MLflow logging override them."""

    def on_step(self, loop: "Loop", metrics: dict) -> None: ...

    def on_eval(self, loop: "Loop", loss: float) -> None: ...

    def on_checkpoint(self, loop: "Loop") -> None: ...


def _unwrap_ddp(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _is_fsdp(model) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel)


def _is_deepspeed(model) -> bool:
    # Duck-typed: deepspeed is lazily imported and absent from the CPU venv.
    return type(model).__name__ == "DeepSpeedEngine"


def _token_loss_sums(logits, labels) -> tuple:
    """Per-sequence (sum of next-token cross-entropy, number of label tokens), as HF's causal LM loss counts
    them: logits at t predict labels at t + 1, IGNORE labels are skipped, fp32."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=-100, reduction="none").view(labels.shape)
    return ce.sum(dim=1).double(), (labels != -100).sum(dim=1)


class Loop:
    """One rank's training loop over pre-encoded examples (see :mod:`coloc_ray.finetune.data`)."""

    def __init__(self, model, scalers, train_items: list, held_items: list, cfg, pad_id: int,
                 device: Any = "cpu", rank: int = 0, world: int = 1, hooks: Optional[Hooks] = None,
                 optimizer=None, progress_path=None, progress_info: Optional[dict] = None):
        """``model`` is plain, DDP-, FSDP-wrapped or a DeepSpeed engine; FSDP and ZeRO-3 pass the
        ``optimizer`` built by :func:`~coloc_ray.finetune.strategies.prepare_for_strategy` (after wrapping).
        ``progress_path``: rank 0 rewrites this JSON file on every progress line (live view of a study);
        ``progress_info`` is added to each line (the Ray worker's node id, so a watcher knows where it runs)."""
        self.model, self.scalers, self.cfg = model, scalers, cfg
        self.train_items, self.held_items, self.pad_id = train_items, held_items, pad_id
        self.device, self.rank, self.world = torch.device(device), rank, world
        self.hooks = hooks or Hooks()
        self.progress_path, self.progress_info = progress_path, dict(progress_info or {})
        self.strategy = "zero3" if _is_deepspeed(model) else "fsdp" if _is_fsdp(model) else "ddp"
        self.optimizer = optimizer if optimizer is not None else build_optimizer(_unwrap_ddp(model), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.order = ShardedOrder(len(train_items), cfg.batch_size, cfg.seed, rank, world)
        self.state = LoopState()
        # Per-record held-out losses of the latest evaluation (not checkpointed: run() always ends with one).
        self.record_losses: Optional[dict[str, float]] = None
        self.record_tokens: Optional[dict[str, int]] = None
        torch.manual_seed(cfg.seed * 7919 + rank)  # dropout stream, distinct per rank

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, ckpt_dir) -> None:
        """Write this rank's part of a checkpoint (collective under FSDP / ZeRO-3: every rank calls it)."""
        if self.strategy != "ddp":
            sharded_io(self.strategy)[0](ckpt_dir, self.model, self.optimizer, self.scheduler, self.state, self.rank)
            return
        save_state(ckpt_dir, _unwrap_ddp(self.model), self.optimizer, self.scheduler, self.state, self.rank)

    def resume(self, ckpt_dir) -> None:
        """Continue from a checkpoint written by :meth:`save` (same config, same world size)."""
        load = sharded_io(self.strategy)[1] if self.strategy != "ddp" else load_state
        self.state = load(ckpt_dir, _unwrap_ddp(self.model), self.optimizer, self.scheduler, self.rank)
        self.state.resumed_from.append(self.state.step)
        log.info("rank %d resumed at step %d (data position %d)", self.rank, self.state.step, self.state.micro)

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted mean cross-entropy on the held-out items (dropout off).

        Also keeps each record's own mean token loss in :attr:`record_losses` (``{record id: loss}``, the
        id from the data loader or the item's position) and its label-token count in :attr:`record_tokens`.
        Every rank evaluates every held-out record with the same weights (DDP: the plain module; FSDP /
        ZeRO-3: the collective forward), so every rank holds the same values.
        """
        model = _unwrap_ddp(self.model)
        items = self.held_items[:self.cfg.eval_max_records] if self.cfg.eval_max_records else self.held_items
        model.eval()
        losses, tokens = {}, {}
        for i in range(0, len(items), self.cfg.batch_size):
            chunk = items[i:i + self.cfg.batch_size]
            batch = {k: v.to(self.device) for k, v in collate(chunk, self.pad_id).items()}
            labels = batch.pop("labels")
            with self._autocast():
                logits = model(**batch).logits
            sums, counts = _token_loss_sums(logits, labels)
            for j, ex in enumerate(chunk):
                rid = str(ex.get("id", i + j))
                losses[rid], tokens[rid] = float(sums[j]) / max(int(counts[j]), 1), int(counts[j])
        model.train()
        count = sum(tokens.values())
        loss = sum(losses[r] * tokens[r] for r in losses) / max(count, 1)
        self.record_losses, self.record_tokens = losses, tokens
        if self.state.eval_losses and self.state.eval_losses[-1]["step"] == self.state.step:
            self.state.eval_losses.pop()  # re-evaluated at the same step (a resume after the last eval)
        entry = {"step": self.state.step, "loss": loss}
        if self.state.step == 0:
            # Before any update LoRA's B is 0 and GARFA's alpha is 1: the base model's own per-record losses
            # (the A - base comparison). Kept in the state, so a resumed run still reports them.
            entry["records"] = dict(losses)
        self.state.eval_losses.append(entry)
        self.hooks.on_eval(self, loss)
        return loss

    def _autocast(self):
        if self.device.type == "cuda":  # METHOD 6: bf16 on GPU; fp32 on CPU
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- training ------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; returns the step's metrics."""
        cfg, model = self.cfg, self.model
        t0 = time.perf_counter()
        loss_sum, tokens = 0.0, 0
        for k in range(cfg.grad_accum):
            idx = self.order.batch(self.state.micro)
            self.state.micro += 1
            batch = {n: v.to(self.device) for n, v in collate([self.train_items[i] for i in idx], self.pad_id).items()}
            last = k == cfg.grad_accum - 1
            # DDP / FSDP: reduce gradients once per optimizer step, not per micro-batch. The ZeRO-3 engine
            # accumulates and reduces at its own boundary (its no_sync refuses partitioned gradients).
            skip = last or self.strategy == "zero3" or not hasattr(model, "no_sync")
            sync = contextlib.nullcontext() if skip else model.no_sync()
            with sync, self._autocast():
                out = model(**batch)
                self._backward(out.loss)
            loss_sum += float(out.loss.detach())
            tokens += int(batch["attention_mask"].sum())
        lrs = {f"lr_{g['name']}": g["lr"] for g in self.optimizer.param_groups}
        grad_norm = self._clip_and_step()
        self.scheduler.step()
        loss, tokens = self._all_ranks(loss_sum / cfg.grad_accum, tokens)
        self.state.step += 1
        self.state.tokens += tokens
        self.state.train_time += time.perf_counter() - t0
        self.state.train_losses.append(loss)
        return {"loss": loss, "grad_norm": grad_norm, **lrs,
                "tokens_per_s": self.state.tokens / max(self.state.train_time, 1e-9), **self.alpha_metrics()}

    def _backward(self, loss) -> None:
        if self.strategy == "zero3":
            # The engine scales by 1/gradient_accumulation_steps itself and only steps at the boundary.
            self.model.backward(loss)
            self.model.step()
        else:
            (loss / self.cfg.grad_accum).backward()

    def _clip_and_step(self) -> float:
        """Clip to ``max_grad_norm`` (the global norm over all ranks' shards) and step; returns the norm."""
        if self.strategy == "zero3":
            norm = self.model.get_global_grad_norm()  # clipped and stepped inside engine.step()
            return float(norm) if norm is not None else float("nan")
        if self.strategy == "fsdp":
            # FSDP's own clip: each rank holds a shard of the grads, so the norm needs an all-reduce.
            norm = self.model.clip_grad_norm_(self.cfg.max_grad_norm)
        else:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def full_rho(self):
        """A context giving every rank the full ``rho`` (sharded under FSDP / ZeRO-3; collective there)."""
        if self.scalers is None or self.strategy == "ddp":
            return contextlib.nullcontext()
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            # rho lives in the root unit (it is no decoder layer's): gathering the root alone suffices.
            return FSDP.summon_full_params(self.model, recurse=False, writeback=False)
        import deepspeed

        return deepspeed.zero.GatheredParameters([self.scalers.rho], modifier_rank=None)

    def _all_ranks(self, loss: float, tokens: int) -> tuple[float, int]:
        """Mean loss and total tokens over all ranks (identity on one rank)."""
        import torch.distributed as dist

        if self.world == 1 or not dist.is_initialized():
            return loss, tokens
        t = torch.tensor([loss, float(tokens)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t[0]) / self.world, int(t[1])

    def alpha_metrics(self) -> dict[str, float]:
        """``alpha/L{l}_H{g}`` for every GARFA scaler (empty without GARFA)."""
        if self.scalers is None:
            return {}
        with self.full_rho():
            a = self.scalers.alpha().detach().cpu()
        return {f"alpha/L{l}_H{g}": float(a[r, g]) for r, l in enumerate(self.scalers.layers)
                for g in range(a.shape[1])}

    def _write_progress(self, metrics: dict, eta_s: float) -> None:
        """The progress line as ``progress_path`` (atomic); a failed write never stops training."""
        if not self.progress_path:
            return
        from coloc_ray.io import write_json

        try:
            write_json(self.progress_path, {"step": self.state.step, "max_steps": self.cfg.max_steps,
                                            "loss": metrics["loss"], "tokens_per_s": metrics["tokens_per_s"],
                                            "eta_s": eta_s, "updated": time.time(), **self.progress_info})
        except OSError as e:  # e.g. a full or read-only disk: the live view is a convenience
            log.warning("cannot write progress file %s: %s", self.progress_path, e)

    def run(self) -> LoopState:
        """Train from the current state to ``max_steps``, with evals, checkpoints and progress lines."""
        cfg = self.cfg
        if self.state.step == 0 and not self.state.eval_losses:
            self.evaluate()  # the step-0 baseline the held-out curve starts from
        t_start, s_start = time.perf_counter(), self.state.step
        while self.state.step < cfg.max_steps:
            metrics = self.train_step()
            step = self.state.step
            self.hooks.on_step(self, metrics)
            if self.rank == 0 and (step % cfg.log_every == 0 or step == cfg.max_steps):
                eta = (time.perf_counter() - t_start) / (step - s_start) * (cfg.max_steps - step)
                log.info("step %d/%d loss %.4f lr %.2e tok/s %.0f ETA %.0fs", step, cfg.max_steps, metrics["loss"],
                         self.optimizer.param_groups[0]["lr"], metrics["tokens_per_s"], eta)
                self._write_progress(metrics, eta)
            if step % cfg.eval_every == 0 and step != cfg.max_steps:
                self.evaluate()
            if step % cfg.checkpoint_every == 0 and step != cfg.max_steps:
                self.hooks.on_checkpoint(self)
        if self.record_losses is None or self.state.eval_losses[-1]["step"] != cfg.max_steps:
            self.evaluate()  # the final held-out loss, and its per-record losses, at max_steps
        return self.state
