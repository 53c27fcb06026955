"""The code that runs on Ray Train workers, and the TorchTrainer that runs it (the only ray.train module).

Each worker builds the same model (LoRA init seeded), takes its shard of the seeded data order, and runs
:class:`~coloc_ray.finetune.loop.Loop`. Every ``checkpoint_every`` steps all ranks call ``ray.train.report``
(it is a barrier): rank 0 with the weights, optimizer, scheduler and data position, every rank with its own
RNG state. After a worker failure Ray restarts the group (``FailureConfig.max_failures``) and
``ray.train.get_checkpoint()`` hands the last checkpoint back, from which the loop resumes exactly.
The last report carries the final artifacts in ``final/``. ``cfg.strategy`` picks DDP, FSDP (torch, sharded
LoRA + rho gathered for checkpoints and the adapter) or DeepSpeed ZeRO-3 (the engine's own checkpoints).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

from coloc_ray.finetune.bare import TrackingHooks, final_metrics, prepare

log = logging.getLogger(__name__)

FINAL = "final"  # subdirectory of the last checkpoint holding the adapter + metrics
PROGRESS = "progress.json"  # live {step, max_steps, loss, tokens_per_s, eta_s, updated}, in the Ray Train run dir


def run_progress_file(storage_path: str, name: str) -> Optional[str]:
    """Where rank 0 keeps the live progress of run ``name``: ``<storage_path>/<name>/progress.json``.

    The Ray Train run dir, because the workers know it (not ``out_dir``) and it is on storage the driver
    reads too: a local path or an object-store URI (``coloc_ray.io.write_json`` writes either).
    """
    s = str(storage_path)
    return f"{s.rstrip('/')}/{name}/{PROGRESS}" if "://" in s else str(Path(s) / name / PROGRESS)


def ray_run_name(name: str) -> str:
    """Ray Train's run name for run ``name``: a directory under storage_path, so no separators (study trials pass
    ``"<trial>/finetune"``, which becomes ``"<trial>-finetune"``)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def run_location(cfg, out_dir) -> tuple[str, str, str]:
    """(run name, Ray Train run name, storage path) of ``run_finetune(cfg, out_dir)``: the one place they are derived."""
    from coloc_ray.io import config_hash

    name = cfg.run_name or f"finetune-{config_hash(cfg.model_dump(mode='json'))}"
    ray_name = ray_run_name(name)
    if cfg.storage_path and "://" in cfg.storage_path:
        storage = cfg.storage_path.rstrip("/")  # an object-store URI: Ray Train opens it with pyarrow.fs
    elif cfg.storage_path:
        storage = str(Path(cfg.storage_path).expanduser().resolve())
    else:
        storage = str(Path(out_dir).resolve() / ".train")
    return name, ray_name, storage


def progress_file(cfg, out_dir) -> Path | str:
    """The live progress file of ``run_finetune(cfg, out_dir)``, for a caller to poll while it runs."""
    _, ray_name, storage = run_location(cfg, out_dir)
    p = run_progress_file(storage, ray_name)
    return p if "://" in p else Path(p)


class RayHooks(TrackingHooks):
    """Checkpoint through ``ray.train.report``; optional fault injection for the recovery test."""

    def __init__(self, tracker, rank: int, fault: Optional[dict] = None):
        super().__init__(tracker)
        self.rank, self.fault = rank, fault or {}

    def on_step(self, loop, metrics: dict) -> None:
        super().on_step(loop, metrics)
        f = self.fault
        # Fault injection (tests only): at step k, once, rank 0 writes its PID and waits to be killed.
        if f and self.rank == 0 and loop.state.step == f["at_step"] and not os.path.exists(f["pid_file"]):
            Path(f["pid_file"]).write_text(str(os.getpid()))
            time.sleep(f.get("hold_s", 120))

    def on_checkpoint(self, loop) -> None:
        report(loop, {"step": loop.state.step, "loss": loop.state.train_losses[-1]})


def report(loop, metrics: dict, extra=None) -> None:
    """Save this rank's part of a checkpoint and report it (every rank must call this, in step)."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="coloc-ckpt-") as d:
        loop.save(d)
        if extra is not None:
            extra(Path(d))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _wrap_ddp(model, world: int):
    """DDP for more than one rank. Every trainable parameter (LoRA in X, rho in Y) is used in every
    forward, so ``find_unused_parameters`` stays off; an empty set simply has no parameters."""
    if world == 1:
        return model
    import ray.train.torch

    return ray.train.torch.prepare_model(model, move_to_device=False, parallel_strategy="ddp",
                                         parallel_strategy_kwargs={"find_unused_parameters": False})


def _wrap(model, cfg, world: int):
    """``(model, optimizer)`` for ``cfg.strategy``; DDP's optimizer is built by the Loop (None here)."""
    if cfg.strategy == "ddp":
        return _wrap_ddp(model, world), None
    import torch

    from coloc_ray.finetune.loop import build_optimizer
    from coloc_ray.finetune.strategies import prepare_for_strategy, zero3_config_for

    built = []

    def make_optimizer(m):
        built.append(build_optimizer(m, cfg))
        return built[-1]

    if cfg.strategy == "zero3":
        ds = zero3_config_for(cfg, bf16=torch.cuda.is_available())
        engine, _ = prepare_for_strategy(model, "zero3", make_optimizer=make_optimizer, ds_config=ds)
        # Our scheduler drives the plain AdamW: the ZeRO-3 optimizer wraps it, steps it and reads its groups'
        # lr, but is no torch Optimizer for LambdaLR. Its state is checkpointed through the engine.
        return engine, built[0]
    # METHOD 6: bf16 on GPU, fp32 on CPU (where FSDP must match the DDP run it is tested against).
    mp = "bf16" if torch.cuda.is_available() else None
    return prepare_for_strategy(model, "fsdp", make_optimizer=make_optimizer, mixed_precision=mp)


def save_final_adapter(loop, tm, out: Path) -> None:
    """Write the adapter from the full trainable state on rank 0 (every rank must call this)."""
    from coloc_ray.finetune.adapter import save_adapter

    if loop.strategy == "ddp":
        if loop.rank == 0:
            save_adapter(loop.model, tm.scalers, tm.info, out)
        return
    if loop.strategy == "zero3":
        import deepspeed

        params = [p for p in loop.model.module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if loop.rank == 0:
                save_adapter(loop.model.module, tm.scalers, tm.info, out)
        return
    from coloc_ray.finetune.state import fsdp_full_state

    weights, _ = fsdp_full_state(loop.model, loop.optimizer)
    if loop.rank == 0:
        save_adapter_from_state(tm, weights, out)


def save_adapter_from_state(tm, weights: dict, out: Path) -> None:
    """The adapter dir of ``tm`` with the tensors in ``weights`` (full names, as from the unwrapped model)."""
    import torch

    from coloc_ray.finetune.adapter import MODEL_INFO
    from coloc_ray.io import write_json

    out.mkdir(parents=True, exist_ok=True)
    if hasattr(tm.model, "peft_config"):
        _save_peft_from_state(tm.model, weights, out)
    if tm.scalers is not None:
        from coloc_ray.garfa import GarfaScalers, save_garfa

        s = tm.scalers
        full = GarfaScalers(s.layers, s.num_kv_heads, s.head_dim, c=s.c)
        (rho,) = [v for k, v in weights.items() if k.endswith("garfa_scalers.rho")]
        with torch.no_grad():
            full.rho.copy_(rho.to(torch.float32))
        save_garfa(full, out, tm.info)
    write_json(out / MODEL_INFO, tm.info.to_dict())


def _save_peft_from_state(peft_model, weights: dict, out: Path) -> None:
    """PEFT's adapter files from gathered weights. ``save_pretrained(state_dict=...)`` cannot be used: PEFT
    matches keys against ``named_modules()``, which under FSDP carry ``_fsdp_wrapped_module.`` and match none
    (it silently writes an empty adapter). Same file format as PEFT: adapter name dropped, inference mode."""
    import copy

    from safetensors.torch import save_file

    cfg = copy.deepcopy(peft_model.peft_config["default"])
    cfg.inference_mode = True
    cfg.save_pretrained(str(out))
    lora = {k.replace(".default.", "."): v.detach().to("cpu").contiguous() for k, v in weights.items()
            if "lora_" in k}
    save_file(lora, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train entry point. ``config``: ``cfg`` (FinetuneConfig dict), ``tracking_uri``, ``run_id``, ``fault``."""
    import ray.train
    import ray.train.torch

    from coloc_ray.finetune.config import FinetuneConfig
    from coloc_ray.finetune.loop import Loop
    from coloc_ray.finetune.lora import trainable_counts
    from coloc_ray.io import write_json
    from coloc_ray.tracking import Tracker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()
    cfg = FinetuneConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    import torch

    # Logical GPUs (a test cluster, or GPUs Ray counts that torch cannot use): the worker still holds its GPU
    # ids, and computes on the CPU instead of failing in CUDA set-up.
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    prep = prepare(cfg, device=str(device))
    tm = prep.trainable
    tracker = Tracker(config.get("tracking_uri"), run_id=config.get("run_id"),
                      enabled=bool(config.get("run_id")) and rank == 0).start()
    counts = trainable_counts(tm.model)  # before sharding: FSDP / ZeRO-3 leave each rank a slice
    model, optimizer = _wrap(tm.model, cfg, world)
    loop = Loop(model, tm.scalers, prep.train_items, prep.held_items, cfg,
                tm.tokenizer.pad_token_id, device=device, rank=rank, world=world,
                hooks=RayHooks(tracker, rank, config.get("fault")), optimizer=optimizer,
                progress_path=config.get("progress_file") if rank == 0 else None,
                progress_info={"node_id": ray.get_runtime_context().get_node_id()})
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            loop.resume(d)
    elif rank == 0:
        tracker.log_params({**counts, "quant_resolved": tm.quant, "num_train_records": len(prep.train_items)})
    held = _held_accelerators(rank, time.time())
    loop.run()
    held["end"] = time.time()
    with loop.full_rho():  # final_metrics reads alpha from rho, sharded under FSDP / ZeRO-3
        metrics = final_metrics(loop, tm, time.perf_counter() - t0)
    metrics.update(counts, num_workers=world, strategy=cfg.strategy, accelerators=_gather(held, world))

    def write_final(d: Path) -> None:
        # Collective under FSDP / ZeRO-3 (the trainable tensors are gathered); rank 0 writes.
        save_final_adapter(loop, tm, d / FINAL)
        if rank == 0:
            write_json(d / FINAL / "metrics.json", metrics)

    report(loop, {"step": loop.state.step, "loss": metrics["final_train_loss"], "done": 1}, extra=write_final)
    return metrics


def _held_accelerators(rank: int, start: float) -> dict:
    """This worker's node and the GPU ids Ray assigned it (what ``result.json`` records per trial)."""
    import ray

    return {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start}


def _gather(obj: dict, world: int) -> list[dict]:
    """Every rank's ``obj`` (a collective when world > 1), ordered by rank."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return sorted(out, key=lambda d: d["rank"])


def build_trainer(cfg, storage_path: str, name: str, tracking_uri: Optional[str] = None,
                  run_id: Optional[str] = None, fault: Optional[dict] = None):
    """The Ray Train V2 TorchTrainer for ``cfg`` (checkpoints and restarts under ``storage_path/name``)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from coloc_ray.finetune.rendezvous import BoundTorchConfig

    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = cfg.gpus_per_worker
    # Workers must find the same data, model cache and offline switches as the driver.
    env = {k: os.environ[k] for k in ("COLOC_DATA", "COLOC_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                      "HF_HOME", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
           if k in os.environ}
    env["OMP_NUM_THREADS"] = str(max(1, int(cfg.cpus_per_worker)))
    import torch

    # NCCL needs CUDA: with logical GPUs only (no CUDA here) the process group runs on gloo.
    backend = None if torch.cuda.is_available() or not cfg.use_gpu else "gloo"
    return TorchTrainer(
        # The process group's store listens on the node's address, not on every interface (rendezvous.py).
        train_loop_per_worker, torch_config=BoundTorchConfig(backend=backend),
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "tracking_uri": tracking_uri, "run_id": run_id,
                           "fault": fault, "progress_file": run_progress_file(storage_path, name)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=name, storage_path=storage_path,
            # Bounded: a worker group that cannot start (a lost node, no capacity) counts against the same
            # limit instead of Ray's default of retrying forever (controller_failure_limit=-1).
            failure_config=FailureConfig(max_failures=cfg.max_failures,
                                         controller_failure_limit=max(cfg.max_failures, 0) + 1),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": env}),
    )
