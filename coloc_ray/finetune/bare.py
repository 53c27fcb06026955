"""Setting up one rank (model + data) and running the loop without Ray (benchmark baseline, debugging).

:func:`prepare` is shared by the Ray worker and the bare path, so both train exactly the same thing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from coloc_ray.finetune.loop import Hooks, Loop

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A rank's model and data, ready for :class:`~coloc_ray.finetune.loop.Loop`."""

    trainable: Any        # lora.TrainableModel
    train_items: list
    held_items: list


def prepare(cfg, device: Optional[str] = None) -> Prepared:
    """Load the model with LoRA + GARFA attached and the encoded, split training data."""
    import torch

    from coloc_ray.finetune.data import data_seed, encode_all, load_records, split_heldout
    from coloc_ray.finetune.lora import build_trainable

    # Keep torch to this rank's CPU share: on a shared, busy machine more intra-op threads than CPUs
    # make every op wait on its slowest thread (measured here: 10x-50x slower steps).
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    tm = build_trainable(cfg, device=device)
    # The records and the held-out split follow the data seed, not cfg.seed: every arm and training seed
    # is evaluated on the same held-out records. cfg.seed still drives data order, LoRA init and dropout.
    seed = data_seed(cfg.data)
    records = load_records(cfg.data, seed=seed)
    items = encode_all(tm.tokenizer, [m for _, m in records], cfg.max_len, ids=[r for r, _ in records])
    train, held = split_heldout(items, cfg.heldout_fraction, seed)
    return Prepared(tm, train, held)


class TrackingHooks(Hooks):
    """Per-step metrics and held-out losses into an MLflow run (rank 0 only; others get a disabled tracker)."""

    def __init__(self, tracker):
        self.tracker = tracker

    def on_step(self, loop: Loop, metrics: dict) -> None:
        self.tracker.log_metrics(metrics, step=loop.state.step)

    def on_eval(self, loop: Loop, loss: float) -> None:
        self.tracker.log_metrics({"eval_loss": loss}, step=loop.state.step)


def final_metrics(loop: Loop, tm, wall_s: float) -> dict:
    """The ``metrics.json`` of a finished run."""
    from coloc_ray.finetune.loop import _unwrap_ddp
    from coloc_ray.finetune.lora import trainable_counts

    st = loop.state
    alpha = None
    if tm.scalers is not None:
        a = tm.scalers.alpha().detach().cpu().double()
        alpha = {f"L{l}": a[r].tolist() for r, l in enumerate(tm.scalers.layers)}
    return {
        "final_train_loss": st.train_losses[-1] if st.train_losses else None,
        "final_eval_loss": st.eval_losses[-1]["loss"] if st.eval_losses else None,
        # {record id: mean token loss} on the held-out records at the final step (same records for every arm)
        "heldout_record_losses": loop.record_losses,
        "heldout_record_tokens": loop.record_tokens,
        # the same records at step 0, i.e. under the base model (LoRA B = 0, GARFA alpha = 1)
        "heldout_record_losses_step0": next((e["records"] for e in st.eval_losses if "records" in e), None),
        "eval_losses": [{"step": e["step"], "loss": e["loss"]} for e in st.eval_losses],
        "train_losses": st.train_losses,
        "alpha": alpha,
        "steps": st.step,
        "tokens": st.tokens,
        "tokens_per_s": st.tokens / max(st.train_time, 1e-9),
        "train_time_s": st.train_time,
        "wall_s": wall_s,
        "resumed_from": st.resumed_from,
        "quant": tm.quant,
        "num_train_records": len(loop.train_items),
        "num_heldout_records": len(loop.held_items),
        **trainable_counts(_unwrap_ddp(loop.model)),
    }


def run_bare(cfg, out_dir: Optional[str | Path] = None, device: Optional[str] = None) -> dict:
    """Train one process without Ray (no checkpoints); write the adapter to ``out_dir`` if given."""
    from coloc_ray.finetune.adapter import save_adapter

    t0 = time.perf_counter()
    prep = prepare(cfg, device=device)
    tm = prep.trainable
    loop = Loop(tm.model, tm.scalers, prep.train_items, prep.held_items, cfg, tm.tokenizer.pad_token_id,
                device=next(tm.model.parameters()).device)
    loop.run()
    metrics = final_metrics(loop, tm, time.perf_counter() - t0)
    if out_dir is not None:
        save_adapter(tm.model, tm.scalers, tm.info, out_dir)
    return metrics
