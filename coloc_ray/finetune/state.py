"""Training state inside a checkpoint: everything needed to resume a run exactly.

A checkpoint directory holds ``trainable.safetensors`` (LoRA weights + rho, by parameter name),
``state.pt`` (optimizer, scheduler, step, data position, loss history), both from rank 0, and one
``rng_rank{r}.pt`` per rank (each rank's dropout stream differs; Ray merges the ranks' directories).
FSDP writes the same files from gathered (full) state; ZeRO-3 adds DeepSpeed's own ``zero3/`` shards. ``state.pt`` is a
torch pickle of our own state dicts, written and read only by this module, and only inside checkpoints; it is
read with ``torch.load(weights_only=True)``, which unpickles only tensors and plain containers, so a tampered
checkpoint cannot run code on resume. Final artifacts (the adapter dir) never contain a pickle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

TRAINABLE = "trainable.safetensors"
STATE = "state.pt"


@dataclass
class LoopState:
    """Where a run stands. ``micro`` is the data position: micro-batches consumed by each rank."""

    step: int = 0
    micro: int = 0
    tokens: int = 0
    train_time: float = 0.0                           # seconds inside training steps (not eval, not I/O)
    train_losses: list = field(default_factory=list)
    eval_losses: list = field(default_factory=list)   # [{"step": s, "loss": x}]
    resumed_from: list = field(default_factory=list)  # steps this run restarted from


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable tensors (LoRA + rho) of ``model``, keyed by name without DDP's ``module.`` prefix."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[name.removeprefix("module.")] = p.detach().to("cpu", torch.float32).contiguous()
    return out


def save_rng(ckpt_dir: str | Path, rank: int) -> None:
    """Write this rank's RNG states (every rank does; the dropout stream is per rank)."""
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               d / f"rng_rank{rank}.pt")


def save_state(ckpt_dir: str | Path, model, optimizer, scheduler, state: LoopState, rank: int = 0) -> None:
    """Write the resumable state into ``ckpt_dir``: model/optimizer/loop from rank 0, RNG from every rank.

    DDP keeps the trainable weights and optimizer states identical on every rank, so rank 0's copy suffices.
    """
    from safetensors.torch import save_file

    save_rng(ckpt_dir, rank)
    if rank != 0:
        return
    d = Path(ckpt_dir)
    save_file(trainable_state(model), str(d / TRAINABLE))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "loop": asdict(state)},
               d / STATE)


def load_state(ckpt_dir: str | Path, model, optimizer, scheduler, rank: int = 0) -> LoopState:
    """Restore what :func:`save_state` wrote; returns the loop state to continue from."""
    from safetensors.torch import load_file

    d = Path(ckpt_dir)
    saved = load_file(str(d / TRAINABLE))
    params = {n.removeprefix("module."): p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) ^ set(saved))
    if missing:
        raise RuntimeError(f"checkpoint {d} does not match the model's trainable parameters: {missing[:5]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(p.device, p.dtype))
    blob = _load_blob(d / STATE)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    _load_rng(d, rank)
    return LoopState(**blob["loop"])


def _load_blob(path: Path) -> dict:
    """A checkpoint's pickle, tensors and plain containers only (``weights_only``: no code runs on load)."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise RuntimeError(f"checkpoint file {path} is corrupt or holds more than tensors and plain data "
                           f"({first}); resume from an earlier checkpoint or start afresh") from None


def _load_rng(d: Path, rank: int) -> None:
    rng_file = d / f"rng_rank{rank}.pt"
    if rng_file.is_file():  # absent when resuming on more ranks than saved: those start a fresh stream
        rng = _load_blob(rng_file)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


# -- FSDP and ZeRO-3 ---------------------------------------------------------------------------------
# Same directory layout as DDP (trainable.safetensors with the same names, state.pt, rng_rank*.pt), but the
# weights and optimizer state are sharded, so gathering them is collective: every rank must call these.

def _fsdp_options(**kw):
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Only LoRA + rho (ignore_frozen_params): the frozen base is never written. cpu_offload gathers onto rank
    # 0's CPU only (the 70B case); torch 2.13 segfaults with it on a CPU-only gloo group, where every rank
    # gets the (tiny) full dict instead.
    return StateDictOptions(full_state_dict=True, ignore_frozen_params=True,
                            cpu_offload=torch.cuda.is_available(), **kw)


def fsdp_full_state(model, optimizer) -> tuple[dict, dict]:
    """The full trainable state (LoRA + rho by their unwrapped names) and optimizer state of an FSDP model.

    Collective. Rank 0 always gets both in full (on CPU with CUDA; other ranks may get empty dicts then).
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer, options=_fsdp_options())


def save_state_fsdp(ckpt_dir, model, optimizer, scheduler, state: LoopState, rank: int = 0) -> None:
    """:func:`save_state` for an FSDP-wrapped model (collective)."""
    from safetensors.torch import save_file

    weights, optim = fsdp_full_state(model, optimizer)
    save_rng(ckpt_dir, rank)
    if rank != 0:
        return
    d = Path(ckpt_dir)
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weights.items()}, str(d / TRAINABLE))
    torch.save({"optimizer": optim, "scheduler": scheduler.state_dict(), "loop": asdict(state),
                "strategy": "fsdp"}, d / STATE)


def load_state_fsdp(ckpt_dir, model, optimizer, scheduler, rank: int = 0) -> LoopState:
    """Restore what :func:`save_state_fsdp` wrote; every rank reads the full files and keeps its shard."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_state_dict

    d = Path(ckpt_dir)
    blob = _load_blob(d / STATE)
    if blob.get("strategy") != "fsdp":
        raise RuntimeError(f"checkpoint {d} was not written by the FSDP strategy; resume with the strategy "
                           "that wrote it")
    set_state_dict(model, optimizer, model_state_dict=load_file(str(d / TRAINABLE)),
                   optim_state_dict=blob["optimizer"], options=_fsdp_options(strict=False))
    scheduler.load_state_dict(blob["scheduler"])
    _load_rng(d, rank)
    return LoopState(**blob["loop"])


ZERO3_TAG = "zero3"  # the DeepSpeed checkpoint tag (subdirectory) inside the Ray checkpoint dir


def save_state_zero3(ckpt_dir, engine, optimizer, scheduler, state: LoopState, rank: int = 0) -> None:
    """:func:`save_state` for a DeepSpeed ZeRO-3 engine (collective): each rank writes its own shards."""
    engine.save_checkpoint(str(ckpt_dir), tag=ZERO3_TAG, exclude_frozen_parameters=True)
    save_rng(ckpt_dir, rank)
    if rank == 0:
        torch.save({"scheduler": scheduler.state_dict(), "loop": asdict(state), "strategy": "zero3"},
                   Path(ckpt_dir) / STATE)


def load_state_zero3(ckpt_dir, engine, optimizer, scheduler, rank: int = 0) -> LoopState:
    """Restore what :func:`save_state_zero3` wrote (Ray merged every rank's shards into ``ckpt_dir``)."""
    d = Path(ckpt_dir)
    # load_module_strict=False: the frozen base is not in it. DeepSpeed returns (None, None) instead of raising
    # when the tag directory is missing; a silent fresh start would break "resume is exact".
    path, _ = engine.load_checkpoint(str(d), tag=ZERO3_TAG, load_module_strict=False)
    if path is None:
        raise RuntimeError(f"checkpoint {d} has no DeepSpeed checkpoint {ZERO3_TAG}/; resume with the strategy "
                           "that wrote it")
    blob = _load_blob(d / STATE)
    scheduler.load_state_dict(blob["scheduler"])
    _load_rng(d, rank)
    return LoopState(**blob["loop"])


def sharded_io(strategy: str):
    """``(save, load)`` for ``fsdp`` or ``zero3`` (signatures of :func:`save_state` / :func:`load_state`)."""
    return {"fsdp": (save_state_fsdp, load_state_fsdp), "zero3": (save_state_zero3, load_state_zero3)}[strategy]
