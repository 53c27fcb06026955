"""Multi-GPU strategies for one trial on several GPUs: FSDP and DeepSpeed ZeRO-3 (Llama 3.1 70B).

The builders are plain functions returning plain data (what Ray Train workers receive);
:func:`prepare_for_strategy` is what a Ray Train worker calls after building its (PEFT) model.

- ``"ddp"``: ``ray.train.torch.prepare_model`` (one GPU per worker, full model copy each).
- ``"fsdp"``: torch FSDP, FULL_SHARD, one unit per decoder layer, bf16 mixed precision,
  ``use_orig_params=True`` (PEFT: frozen base and trainable LoRA / GARFA share flat params).
- ``"zero3"``: DeepSpeed ZeRO stage 3 (``deepspeed.initialize``), bf16, optional CPU offload.

4-bit storage with FSDP (QLoRA + FSDP): load with :func:`fsdp_4bit_quant_kwargs`
(``bnb_4bit_quant_storage=torch.bfloat16``) so the packed NF4 weights are bf16 tensors that
FSDP can flatten and shard beside the bf16 LoRA weights.
"""

from __future__ import annotations

from typing import Any, Callable

from coloc_ray.errors import UserError

STRATEGIES = ("ddp", "fsdp", "zero3")
OFFLOAD_DEVICES = ("none", "cpu", "nvme")

def check_strategy(strategy: str) -> str:
    """Return ``strategy`` or raise a UserError listing the valid names."""
    if strategy not in STRATEGIES:
        raise UserError(f"strategy {strategy!r} is unknown; use one of {', '.join(STRATEGIES)}")
    return strategy


def fsdp_wrap_classes(model) -> set[type]:
    """The classes FSDP wraps as one unit each: the model's own ``_no_split_modules`` (the HF blocks that must
    not be split across devices, i.e. its decoder layers), resolved by name among the model's modules.

    Args:
        model: an HF causal LM, or one wrapped by PEFT / DDP.

    Raises:
        UserError: the model names no such blocks (or none of its modules has a named class).
    """
    from coloc_ray.models import unwrap_model

    base = unwrap_model(model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    classes = {type(m) for m in base.modules() if type(m).__name__ in names}
    if not classes:
        mtype = getattr(getattr(base, "config", None), "model_type", type(base).__name__)
        raise UserError(f"model type {mtype!r} ({type(base).__name__}) declares no decoder blocks in "
                        f"_no_split_modules (got {sorted(names)}), so FSDP cannot tell what to wrap; use strategy "
                        "ddp or zero3, or set _no_split_modules to its decoder-layer class name")
    return classes


def fsdp_kwargs(model, *, mixed_precision: str | None = "bf16", cpu_offload: bool = False,
                sharding: str = "FULL_SHARD", use_orig_params: bool = True,
                device_id: Any = None, sync_module_states: bool | None = None) -> dict[str, Any]:
    """Keyword arguments for ``torch.distributed.fsdp.FullyShardedDataParallel``.

    Args:
        model: the model to wrap; its decoder-layer classes (:func:`fsdp_wrap_classes`) are the FSDP units.
        mixed_precision: ``"bf16"`` (params, reductions and buffers in bf16) or None (fp32).
        cpu_offload: offload sharded parameters to CPU between uses.
        sharding: a ``ShardingStrategy`` name (FULL_SHARD = ZeRO-3 semantics).
        use_orig_params: keep the original parameters visible (needed with PEFT, where frozen and
            trainable tensors share one FSDP unit, and for per-group learning rates).
        device_id: the worker's device (CUDA index / ``torch.device``), or None.
        sync_module_states: broadcast rank 0's weights at wrap time (so other ranks may start from
            empty copies); needs CUDA, so the default is True only for a CUDA ``device_id``.

    Returns:
        A dict to splat into ``FullyShardedDataParallel(model, **kwargs)``.
    """
    import torch
    from torch.distributed.fsdp import CPUOffload, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    try:
        strategy = ShardingStrategy[sharding]
    except KeyError:
        raise UserError(f"FSDP sharding {sharding!r} is unknown; use one of "
                        f"{', '.join(s.name for s in ShardingStrategy)}") from None
    if mixed_precision not in (None, "bf16"):
        raise UserError(f"FSDP mixed_precision {mixed_precision!r} is unknown; use 'bf16' or None")
    mp = None
    if mixed_precision == "bf16":
        mp = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16, buffer_dtype=torch.bfloat16)
    return {
        "auto_wrap_policy": ModuleWrapPolicy(fsdp_wrap_classes(model)),
        "sharding_strategy": strategy,
        "mixed_precision": mp,
        "cpu_offload": CPUOffload(offload_params=cpu_offload),
        "use_orig_params": use_orig_params,
        "device_id": device_id,
        "sync_module_states": (device_id is not None and torch.device(device_id).type == "cuda"
                               if sync_module_states is None else sync_module_states),
    }


def fsdp_4bit_quant_kwargs() -> dict[str, Any]:
    """``BitsAndBytesConfig`` kwargs for QLoRA under FSDP (NF4, double quant, bf16 storage and compute)."""
    import torch

    return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": torch.bfloat16, "bnb_4bit_quant_storage": torch.bfloat16}


def deepspeed_zero3_config(*, micro_batch_size: int, grad_accum: int, world_size: int, bf16: bool = True,
                           offload_optimizer: str = "none", offload_param: str = "none",
                           gradient_clipping: float = 1.0, nvme_path: str | None = None) -> dict[str, Any]:
    """A DeepSpeed config dict for ZeRO stage 3 matching the FinetuneConfig's batch settings.

    The optimizer and LR schedule stay ours (two AdamW groups, METHOD 6), so the config has no
    ``optimizer`` / ``scheduler`` sections: pass the optimizer to ``deepspeed.initialize``.

    Args:
        micro_batch_size: per-GPU batch (FinetuneConfig batch size, METHOD 6: 4).
        grad_accum: gradient-accumulation steps (METHOD 6: 4).
        world_size: GPUs in the trial; ``train_batch_size = micro * accum * world``.
        bf16: bf16 training (fp32 master weights inside DeepSpeed).
        offload_optimizer: ``none``, ``cpu`` or ``nvme`` for the optimizer state.
        offload_param: ``none``, ``cpu`` or ``nvme`` for the sharded parameters.
        gradient_clipping: max global grad norm.
        nvme_path: local NVMe directory, required with an ``nvme`` offload.

    Returns:
        The config dict (checked with :func:`check_zero3_config`).
    """
    for name, n in (("micro_batch_size", micro_batch_size), ("grad_accum", grad_accum), ("world_size", world_size)):
        if int(n) < 1:
            raise UserError(f"ZeRO-3 {name} must be >= 1, got {n}")
    zero: dict[str, Any] = {
        "stage": 3, "overlap_comm": True, "contiguous_gradients": True,
        # DeepSpeed 0.19.8 defaults, written out so the logged config says what ran.
        "reduce_bucket_size": int(5e8), "stage3_prefetch_bucket_size": int(5e7),
        "stage3_param_persistence_threshold": int(1e5),
        # Save a consolidated 16-bit state dict so rank 0 can write the PEFT adapter.
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    for key, device in (("offload_optimizer", offload_optimizer), ("offload_param", offload_param)):
        if device not in OFFLOAD_DEVICES:
            raise UserError(f"ZeRO-3 {key} {device!r} is unknown; use one of {', '.join(OFFLOAD_DEVICES)}")
        if device == "nvme" and not nvme_path:
            raise UserError(f"ZeRO-3 {key}='nvme' needs nvme_path (a local NVMe directory)")
        if device != "none":
            zero[key] = {"device": device, "pin_memory": True, **({"nvme_path": nvme_path} if device == "nvme" else {})}
    cfg = {
        "train_micro_batch_size_per_gpu": int(micro_batch_size),
        "gradient_accumulation_steps": int(grad_accum),
        "train_batch_size": int(micro_batch_size) * int(grad_accum) * int(world_size),
        "gradient_clipping": float(gradient_clipping),
        "bf16": {"enabled": bool(bf16)},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # our AdamW with two parameter groups
        "steps_per_print": 100,
        "wall_clock_breakdown": False,
    }
    check_zero3_config(cfg, world_size=world_size)
    return cfg


def zero3_config_for(cfg, **offload: Any) -> dict[str, Any]:
    """:func:`deepspeed_zero3_config` from a ``FinetuneConfig`` (batch, accumulation, workers, grad clip).

    Args:
        cfg: a ``coloc_ray.finetune.config.FinetuneConfig``.
        **offload: ``offload_optimizer`` / ``offload_param`` / ``nvme_path`` / ``bf16``.
    """
    return deepspeed_zero3_config(micro_batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                                  world_size=cfg.num_workers, gradient_clipping=cfg.max_grad_norm, **offload)


def check_zero3_config(cfg: dict[str, Any], world_size: int) -> None:
    """Raise a UserError if ``cfg`` is not the ZeRO-3 config coloc means, or DeepSpeed itself refuses it.

    Coloc checks only what it needs (stage 3, the trial's batch arithmetic); every other key is DeepSpeed's own
    schema, validated by DeepSpeed (:func:`_deepspeed_validates`) wherever it is installed, and in any case by
    ``deepspeed.initialize`` on the workers.
    """
    zero = cfg.get("zero_optimization") or {}
    if zero.get("stage") != 3:
        raise UserError(f"DeepSpeed config: zero_optimization.stage must be 3 for strategy zero3, got "
                        f"{zero.get('stage')!r}; build the config with deepspeed_zero3_config")
    micro, accum = cfg.get("train_micro_batch_size_per_gpu"), cfg.get("gradient_accumulation_steps")
    ints = isinstance(micro, int) and isinstance(accum, int)
    if not ints or cfg.get("train_batch_size") != micro * accum * world_size:
        raise UserError(f"DeepSpeed config: train_batch_size {cfg.get('train_batch_size')} != micro {micro} x accum "
                        f"{accum} x world {world_size}; build the config with deepspeed_zero3_config")
    _deepspeed_validates(cfg)


def _deepspeed_validates(cfg: dict[str, Any]) -> None:
    """DeepSpeed's own config validation (its pydantic ZeRO / offload models, extra="forbid", and its sanity
    checks such as bf16 with fp16), when deepspeed is importable (the gpu and dev extras); else nothing here."""
    try:
        import deepspeed
        from deepspeed.runtime.config import DeepSpeedConfig
    except ImportError:
        return
    try:
        # Without train_batch_size DeepSpeed derives it from its own world size (1 outside a DeepSpeed process
        # group) instead of refusing a correct multi-GPU config; check_zero3_config checked it for the trial.
        DeepSpeedConfig({k: v for k, v in cfg.items() if k != "train_batch_size"})
    except (ValueError, AssertionError, TypeError) as e:
        raise UserError(f"DeepSpeed {deepspeed.__version__} refuses the config: {_one_line(e)}; coloc writes it for "
                        "deepspeed==0.19.8 (pip install 'coloc-ray[gpu]')") from None


def _one_line(e: Exception) -> str:
    """A pydantic ValidationError as ``Model key.path: message; ...``, anything else as its first line."""
    errors = getattr(e, "errors", None)
    if callable(errors):
        return "; ".join(f"{getattr(e, 'title', '')} {'.'.join(map(str, err['loc']))}: {err['msg']}".strip()
                         for err in errors())
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def prepare_for_strategy(model, strategy: str, *, make_optimizer: Callable | None = None,
                         ds_config: dict[str, Any] | None = None,
                         **fsdp_overrides: Any) -> tuple[Any, Any]:
    """Wrap ``model`` for ``strategy`` inside a (Ray Train) worker; returns ``(model, optimizer)``.

    The process group must exist (Ray Train's TorchTrainer sets it up; tests use gloo).
    The optimizer is built by ``make_optimizer(wrapped_model)`` after wrapping, as FSDP requires.

    Args:
        model: the PEFT (+ GARFA) model, on CPU or its device.
        strategy: ``ddp``, ``fsdp`` or ``zero3``.
        make_optimizer: ``callable(model) -> torch.optim.Optimizer`` (e.g. the two AdamW groups).
        ds_config: the :func:`deepspeed_zero3_config` dict (``zero3`` only).
        **fsdp_overrides: extra :func:`fsdp_kwargs` arguments.
    """
    import torch

    check_strategy(strategy)
    if strategy == "zero3":
        if ds_config is None:
            raise UserError("strategy 'zero3' needs ds_config (build it with deepspeed_zero3_config)")
        deepspeed = import_deepspeed()
        opt = make_optimizer(model) if make_optimizer else None
        engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config,
                                                 model_parameters=[p for p in model.parameters() if p.requires_grad])
        _register_garfa_with_zero3(model, deepspeed)
        return engine, opt
    if strategy == "ddp":
        import ray.train.torch

        wrapped = ray.train.torch.prepare_model(model, parallel_strategy="ddp")
        return wrapped, (make_optimizer(wrapped) if make_optimizer else None)
    if torch.cuda.is_available() and _in_ray_train():
        import ray.train.torch

        # Ray's own path (2.60: FSDP needs CUDA there); it moves the model to the worker's GPU first.
        kwargs = fsdp_kwargs(model, **{"sync_module_states": True, **fsdp_overrides})
        kwargs.pop("device_id", None)
        wrapped = ray.train.torch.prepare_model(model, parallel_strategy="fsdp", parallel_strategy_kwargs=kwargs)
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel

        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        wrapped = FullyShardedDataParallel(model, **fsdp_kwargs(model, device_id=device, **fsdp_overrides))
    return wrapped, (make_optimizer(wrapped) if make_optimizer else None)


def import_deepspeed():
    """``import deepspeed`` (lazy: ~6 s, GPU clusters only), or a UserError saying how to get it."""
    try:
        import deepspeed
    except ImportError:
        raise UserError("strategy 'zero3' needs DeepSpeed, which is not installed in this environment; install "
                        "the gpu extra (pip install 'coloc-ray[gpu]', deepspeed==0.19.8) or use strategy fsdp"
                        ) from None
    return deepspeed


def _register_garfa_with_zero3(model, deepspeed) -> None:
    """GARFA's rho sits on the model root but is read inside the patched attentions: ZeRO-3 gathers a
    parameter only around its owner's forward, so tell it each GARFA attention uses rho (tiny rho is also
    below stage3_param_persistence_threshold, i.e. never partitioned; this keeps it right if that changes)."""
    from coloc_ray.models import decoder_layers, unwrap_model

    scalers = getattr(unwrap_model(model), "garfa_scalers", None)
    if scalers is None:
        return
    blocks = decoder_layers(unwrap_model(model))
    for layer in scalers.layers:
        deepspeed.zero.register_external_parameter(blocks[layer].self_attn, scalers.rho)


def _in_ray_train() -> bool:
    """True inside a Ray Train worker (where ``ray.train.get_context()`` has a world size)."""
    try:
        import ray.train

        return ray.train.get_context().get_world_size() >= 1
    except Exception:  # outside Ray Train there is no context
        return False
