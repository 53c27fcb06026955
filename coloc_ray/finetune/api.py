"""``run_finetune``: one LS-LoRA + GARFA run on Ray Train, artifacts into ``out_dir`` (the Fine-tune contract).

Works from a plain driver and from inside a Ray Tune function trial (Ray already initialised: it is
joined, not restarted; give the trial fractional ``cpus_per_worker``). The MLflow run is created here,
in the driver, so a worker-group restart keeps logging into the same run.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Optional

from coloc_ray.errors import UserError
from coloc_ray.io import staged_output, versions, write_json

log = logging.getLogger(__name__)


def model_depth(spec: str) -> int:
    """The number of decoder layers of ``spec``, read from its config (no weights loaded)."""
    from coloc_ray.models.shape import model_shape

    return model_shape(spec).num_layers


def validate(cfg) -> None:
    """Every check that can fail before any work starts (layer sets against the model, strategy)."""
    if cfg.strategy == "zero3" and cfg.quant == "4bit":
        # DeepSpeed partitions float tensors; bitsandbytes' packed 4-bit weights cannot be sharded by it.
        raise UserError("strategy='zero3' with quant='4bit': ZeRO-3 cannot shard bitsandbytes 4-bit weights; "
                        "use quant none (or auto, which ZeRO-3 resolves to none) or strategy fsdp")
    cfg.check_layers(model_depth(cfg.model))
    if cfg.model_fingerprint:  # the driver's copy; every Ray Train worker checks its own (lora.build_trainable)
        from coloc_ray.models.ref import check_fingerprint, spec_fingerprint

        check_fingerprint(cfg.model, spec_fingerprint(cfg.model), cfg.model_fingerprint)
    if cfg.data.source == "offline":
        from coloc_ray.finetune.data import load_messages

        load_messages(cfg.data, seed=cfg.seed)  # bad records fail here, not on every worker


def _raise_user_error(err: BaseException) -> None:
    """A UserError raised on a worker (e.g. bad data) comes back wrapped: surface its one line again."""
    marker = "coloc_ray.errors.UserError: "
    text = str(err)
    if marker in text:
        raise UserError(text.split(marker, 1)[1].splitlines()[0]) from None


def _log_params(tracker, cfg) -> None:
    tracker.log_params({"config": cfg.model_dump(mode="json"), "lora_layers": sorted(cfg.lora_layers),
                        "garfa_layers": sorted(cfg.garfa_layers), "versions": versions()})


def run_finetune(cfg, out_dir: str | Path, address: Optional[str] = None, *, fault: Optional[dict] = None) -> dict:
    """Fine-tune ``cfg.model`` with LoRA on ``cfg.lora_layers`` and GARFA on ``cfg.garfa_layers``.

    Args:
        cfg: a :class:`~coloc_ray.finetune.config.FinetuneConfig`.
        out_dir: gets the PEFT adapter, ``garfa.safetensors`` + ``garfa.json`` (when GARFA is on),
            ``config.json``, ``metrics.json`` and ``model_info.json``; Ray Train checkpoints go to
            ``cfg.storage_path`` (default ``out_dir/.train``), so re-running the same config resumes.
        address: Ray address to join (None: the running Ray, else a new local one).
        fault: fault injection for the recovery test (``{"pid_file", "at_step"}``); never set it otherwise.

    Returns:
        The metrics dict also written to ``metrics.json``.
    """
    from coloc_ray.finetune.ray_worker import FINAL, build_trainer, run_location
    from coloc_ray.raycluster import ensure_ray
    from coloc_ray.tracking import Tracker, default_tracking_uri

    validate(cfg)
    out = Path(out_dir).resolve()
    name, ray_name, storage = run_location(cfg, out)
    uri = cfg.tracking_uri or default_tracking_uri()
    ensure_ray(address)
    t0 = time.perf_counter()
    with Tracker(uri, cfg.experiment, run_name=name, parent_run_id=cfg.parent_run_id,
                 tags={"stage": "finetune", "model": cfg.model}, enabled=cfg.tracking) as tracker:
        _log_params(tracker, cfg)
        result = build_trainer(cfg, storage, ray_name, uri if cfg.tracking else None, tracker.run_id, fault).fit()
        if result.error is not None:
            _raise_user_error(result.error)
            raise result.error
        with result.checkpoint.as_directory() as d, staged_output(out) as stage:
            names = ["metrics.json", "config.json"]
            for item in (Path(d) / FINAL).iterdir():
                shutil.copy2(item, stage / item.name)
                names.append(item.name)
            metrics = dict(result.return_value or {})
            metrics.update(driver_wall_s=time.perf_counter() - t0, mlflow_run_id=tracker.run_id,
                           ray_run=str(Path(storage) / ray_name))
            write_json(stage / "metrics.json", metrics)
            write_json(stage / "config.json", cfg.model_dump(mode="json"))
        tracker.log_metrics({"final_train_loss": metrics["final_train_loss"],
                             "final_eval_loss": metrics["final_eval_loss"],
                             "final_tokens_per_s": metrics["tokens_per_s"]}, step=metrics["steps"])
        for n in sorted(set(names)):
            tracker.log_artifact(out / n, "adapter")
    log.info("fine-tune done: %d steps, final train loss %.4f, eval loss %.4f -> %s", metrics["steps"],
             metrics["final_train_loss"], metrics["final_eval_loss"], out)
    return metrics
