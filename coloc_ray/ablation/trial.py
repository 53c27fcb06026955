"""What one trial does: fine-tune (LoRA on X, GARFA on Y) -> evaluate -> record ``trials/<id>/result.json``.

The base model is a trial too (arm ``base``: no fine-tune, output in ``base/``), so it is evaluated on Ray
beside the arms instead of before them. A trial whose ``result.json`` exists is never run again; a trial that
was cut off mid-way reuses its MLflow run (``mlflow_run_id`` file) so the study never leaves a run RUNNING.
Plain Python, no Ray: :mod:`coloc_ray.ablation.tune_trials` wraps :func:`run_trial` as a Tune trial.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from coloc_ray.ablation import layout
from coloc_ray.ablation.sections import eval_config_dict, finetune_config_dict
from coloc_ray.ablation.study_config import StudyConfig
from coloc_ray.io import scratch_root, write_json

if TYPE_CHECKING:
    from coloc_ray.ablation.stages import Stages
    from coloc_ray.evaluation.config import EvalConfig
    from coloc_ray.finetune.config import FinetuneConfig
    from coloc_ray.models.ref import ModelRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a study shares: the study, where it is stored, the model the driver resolved, resources.

    Pickled by Tune to each trial process (the study is a pydantic model; the model reference a dataclass).
    """

    study: StudyConfig  # validated, paths resolved (``spine.resolve_paths``)
    storage: str  # the study storage root: a local path every node sees, or an object-store URI
    model: Optional[ModelRef] = None  # resolved once by the driver; None: each stage resolves ``study.model``
    parent_run_id: Optional[str] = None  # the study's MLflow run
    data_dir: Optional[str] = None  # the driver's resolved $COLOC_DATA (checked on every node)
    gpus: float = 0.0  # GPUs the trial holds (for gpu_hours)
    threads: int = 1  # torch threads of the trial process
    start_timeout_s: float = 300.0  # bound on every wait for resources
    model_params: Optional[tuple] = None  # the model's (block, head) parameter counts, from the driver (FLOPs)
    eval_resources: dict = field(default_factory=dict)  # {"GPU", "CPU", "start_timeout_s"} of a GPU evaluation
    progress_interval_s: float = 2.0
    tracking: bool = True

    @property
    def experiment(self) -> str:
        return self.study.experiment_name

    @property
    def fingerprint(self) -> Optional[str]:
        return self.model.fingerprint if self.model is not None else None


def finetune_config(ctx: TrialContext, spec: dict, parent_run_id: str | None) -> FinetuneConfig:
    """The trial's validated FinetuneConfig."""
    from coloc_ray.finetune.config import parse_config

    d = finetune_config_dict(ctx.study.resolved(), spec, parent_run_id, ctx.fingerprint)
    return parse_config(d, where=f"study training ({spec['trial_id']})")


def eval_config(ctx: TrialContext, adapter_dir: str | None, spec: dict) -> EvalConfig:
    """The trial's validated EvalConfig."""
    from coloc_ray.evaluation.config import EvalConfig

    return EvalConfig.model_validate(eval_config_dict(ctx.study.resolved(), adapter_dir, spec, ctx.fingerprint))


def trial_rel(spec: dict) -> str:
    """The trial's folder relative to the study storage (:func:`coloc_ray.ablation.layout.trial_dir`)."""
    return layout.trial_dir(spec["trial_id"], spec["arm"])


def read_result(store, rel: str) -> dict | None:
    """The trial's ``result.json``, or None when it is absent or unreadable: a truncated or foreign file means
    the trial is not finished (it runs again), never that it is done."""
    path = f"{rel}/{layout.RESULT}"
    if not store.is_file(path):
        return None
    try:
        rec = store.read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        log.warning("%s is unreadable (%s): the trial counts as unfinished", store.uri(path), e)
        return None
    if not isinstance(rec, dict) or not {"trial_id", "arm", "eval"} <= set(rec):
        log.warning("%s is not a trial record: the trial counts as unfinished", store.uri(path))
        return None
    return rec


def _tracker(ctx: TrialContext, spec: dict, store, rel: str):
    """The trial's nested MLflow run, resumed (same run id) if an earlier attempt created it."""
    rid = f"{rel}/{layout.RUN_ID}"
    run_id = store.read_text(rid).strip() if store.is_file(rid) else None
    tags = {"coloc.study": ctx.study.name, "coloc.arm": spec["arm"], "coloc.trial_id": spec["trial_id"]}
    tr = open_run(ctx.study.tracking_uri, ctx.experiment, spec["trial_id"], ctx.parent_run_id, tags, run_id,
                  enabled=ctx.tracking)
    if tr.enabled and tr.run_id != run_id:
        store.write_text(rid, tr.run_id)
    return tr


def open_run(uri, experiment: str, name: str, parent: str | None, tags: dict, run_id: str | None,
             enabled: bool = True):
    """Start (or continue, when ``run_id`` still exists in this store) an MLflow run."""
    from coloc_ray.tracking import Tracker

    if run_id is not None and enabled:
        tr = Tracker(uri, experiment, run_name=name, parent_run_id=parent, tags=tags, run_id=run_id).start()
        try:
            tr.set_tags({"coloc.resumed": "true"})  # also checks the run exists in this store
            return tr
        except Exception as e:  # a run id from another store (tracking_uri changed): start afresh
            log.warning("MLflow run %s not found in %s (%s); starting a new run", run_id, uri,
                        str(e).splitlines()[0])
    return Tracker(uri, experiment, run_name=name, parent_run_id=parent, tags=tags, enabled=enabled).start()


def _attempt(store, rel: str) -> int:
    """Append this start to ``attempts.log`` in storage; returns the attempt number (1 = first)."""
    path = f"{rel}/{layout.ATTEMPTS}"
    old = store.read_text(path) if store.is_file(path) else ""
    import socket

    store.write_text(path, old + f"{time.time():.3f} pid={os.getpid()} host={socket.gethostname()}\n")
    return old.count("\n") + 1


def run_trial(spec: dict, ctx: TrialContext, stages: Stages, report: Callable[[dict], Any] | None = None) -> dict:
    """Run one trial to its ``result.json`` in the study storage (or return the existing one untouched).

    The trial works in node-local scratch and uploads its folder when done, ``result.json`` last: on a
    cluster whose nodes share no disk the driver finds every result in the storage (``ctx.storage``, a
    local path every node sees or an object-store URI). Ray Train checkpoints go to ``<storage>/train``, so
    a retry on another node resumes the fine-tune from its last checkpoint.

    Args:
        spec: a :class:`~coloc_ray.ablation.layersets.TrialSpec` as a dict (trial_id, arm, seeds, layers).
        ctx: the study's shared context.
        stages: the stage functions (:func:`coloc_ray.ablation.stages.real_stages`, or a test's).
        report: called with progress metrics (``phase``, ``step``, ``loss``...); Tune's ``tune.report``.

    Returns:
        The trial record (contract "Study" in docs/ARCHITECTURE.md).
    """
    from coloc_ray.storage import Storage

    report = report or (lambda m: None)
    store, rel = Storage(ctx.storage), trial_rel(spec)
    rec = read_result(store, rel)
    if rec is not None:
        report({"phase": "done", "step": rec.get("finetune", {}).get("steps", 0), "skipped": True})
        return rec
    if ctx.data_dir:
        os.environ["COLOC_DATA"] = ctx.data_dir  # the driver's resolved data dir (checked on every node)
    attempt = _attempt(store, rel)
    out = Path(tempfile.mkdtemp(prefix=f"coloc-{spec['trial_id']}-", dir=scratch_root()))
    t0 = time.time()
    tracker = _tracker(ctx, spec, store, rel)
    try:
        tracker.log_params({"arm": spec["arm"], "control_seed": spec["control_seed"],
                            "train_seed": spec["train_seed"], "lora_layers": spec["lora_layers"],
                            "garfa_layers": spec["garfa_layers"]})
        t_ft = time.time()
        ft = _finetune(spec, ctx, stages, out, tracker, report, store)
        ft_wall = time.time() - t_ft
        report({"phase": "eval", "step": ft.get("steps", 0), "loss": ft.get("final_train_loss")})
        adapter = str(out / layout.ADAPTER) if spec["arm"] != "base" else None
        if adapter:  # kept in storage at once: an evaluation elsewhere (or a later look) finds it
            store.upload(out / layout.ADAPTER, f"{rel}/{layout.ADAPTER}", skip=[".train"])
        ev, eval_acc = _evaluate(stages, eval_config(ctx, adapter, spec), out / layout.EVAL, tracker,
                                 ctx.eval_resources, store.uri(f"{rel}/{layout.ADAPTER}") if adapter else None)
        rec = _record(spec, ctx, store.uri(rel), ft, ev, time.time() - t0, tracker.run_id)
        rec.update(attempt=attempt, accelerators={"finetune": ft.get("accelerators", []), "eval": eval_acc},
                   cost=_cost(spec, ctx, ft, ft_wall, ev, out / layout.EVAL, eval_acc))
        _log_result(tracker, rec, out)
        # Run FINISHED before the result exists: a kill in between re-runs the trial (same run), never the
        # reverse (a result whose run stays RUNNING forever).
        tracker.end("FINISHED")
        (out / layout.DONE).write_text(spec.get("config_hash", ""))  # which config; meaningless without RESULT
        write_json(out / layout.RESULT, rec)
        # result.json last: the done marker
        store.upload(out, rel, last=[layout.DONE, layout.RESULT], skip=[layout.ADAPTER])
    except BaseException:
        tracker.end("FAILED")
        raise
    finally:
        shutil.rmtree(out, ignore_errors=True)
    report({"phase": "done", "step": ft.get("steps", 0), "loss": ft.get("final_train_loss"),
            **{f"score/{b}": v.get("score") for b, v in ev.items() if isinstance(v, dict)}})
    return rec


def _evaluate(stages: Stages, cfg, out: Path, tracker, resources: dict, adapter_uri: str | None
              ) -> tuple[dict, dict]:
    """Evaluate in this process, or, when the study gives evaluation GPUs, in a Ray task that holds them.

    The task's GPUs are reserved through a placement group whose wait is bounded
    (``resources["start_timeout_s"]``): a cluster that lost the capacity fails the trial, never hangs it.
    Returns ``(eval.json, {"node_id", "gpu_ids", "start", "end"})``.
    """
    if not resources.get("GPU"):
        t = time.time()
        ev = stages.evaluate(cfg, out, tracker)
        return ev, {**_where(), "start": t, "end": time.time()}
    from coloc_ray.ablation.eval_task import evaluate_on_gpu

    return evaluate_on_gpu(stages, cfg, out, tracker, resources, adapter_uri)


def _where() -> dict:
    """This process's node and the accelerator ids Ray assigned it (empty without Ray or GPUs)."""
    try:
        import ray

        if ray.is_initialized():
            return {"node_id": ray.get_runtime_context().get_node_id(),
                    "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    except Exception:  # noqa: BLE001 - only bookkeeping
        pass
    return {"node_id": None, "gpu_ids": []}


def _finetune(spec: dict, ctx: TrialContext, stages: Stages, out: Path, tracker, report, store=None) -> dict:
    if spec["arm"] == "base":
        return {}
    report({"phase": "finetune", "step": 0})
    cfg = finetune_config(ctx, spec, tracker.run_id if tracker.enabled else None)
    if store is not None and cfg.storage_path is None:  # checkpoints in the study storage
        cfg = cfg.model_copy(update={"storage_path": store.uri(layout.TRAIN)})
    live = stages.finetune_progress(cfg, out / layout.ADAPTER) if stages.finetune_progress else None
    if live is None:
        return stages.finetune(cfg, out / layout.ADAPTER)
    from coloc_ray.ablation.progress import FileWatcher

    # The fine-tune blocks until it ends: a thread relays its progress file (step, loss, ETA) meanwhile.
    with FileWatcher(live, report, interval_s=ctx.progress_interval_s):
        return stages.finetune(cfg, out / layout.ADAPTER)


def _record(spec: dict, ctx: TrialContext, where: str, ft: dict, ev: dict, wall_s: float, run_id) -> dict:
    return {**{k: spec[k] for k in ("trial_id", "arm", "control_seed", "train_seed", "lora_layers",
                                    "garfa_layers")},
            "finetune": ft, "eval": ev, "items_dir": f"{where}/{layout.ITEMS}",
            "adapter_dir": f"{where}/{layout.ADAPTER}" if spec["arm"] != "base" else None,
            "wall_s": round(wall_s, 3), "gpu_hours": round(wall_s / 3600 * float(ctx.gpus), 6),
            "mlflow_run_id": run_id}


def _cost(spec: dict, ctx: TrialContext, ft: dict, ft_wall: float, ev: dict, eval_dir: Path, span: dict) -> dict:
    """The trial's ``cost`` record (:func:`coloc_ray.ablation.cost.trial_cost`), with the evaluation's run
    record read from its ``eval_config.json`` (absent: an evaluation stage that writes none)."""
    from coloc_ray.ablation.cost import model_params, trial_cost
    from coloc_ray.io import read_json

    run = None
    if (eval_dir / "eval_config.json").is_file():
        try:
            run = read_json(eval_dir / "eval_config.json").get("run")
        except (ValueError, AttributeError) as e:
            log.warning("%s unreadable (%s): evaluation cost from its span", eval_dir / "eval_config.json", e)
    params = ctx.model_params
    if params is None and ctx.model is None and spec["arm"] != "base":  # no driver resolution: this node's
        params = model_params(ctx.study.model)
    return trial_cost(spec, ctx.study.resolved(), ft, ft_wall, ev, run, span, params)


def _log_result(tracker, rec: dict, out: Path) -> None:
    """Scores, losses, the record, the adapter and the per-item results on the trial's run."""
    metrics = {f"{b}/score": v.get("score") for b, v in rec["eval"].items() if isinstance(v, dict)}
    for k in ("final_train_loss", "final_eval_loss"):
        if isinstance(rec["finetune"].get(k), (int, float)):
            metrics[k] = rec["finetune"][k]
    cost = {f"cost/{k}": v for k, v in rec.get("cost", {}).items() if isinstance(v, (int, float))}
    tracker.log_metrics({**metrics, "wall_s": rec["wall_s"], "gpu_hours": rec["gpu_hours"], **cost})
    tracker.log_dict(rec, "result.json")
    for sub, art in ((layout.ADAPTER, "adapter"), (layout.ITEMS, "items")):
        if (out / sub).is_dir():
            tracker.log_artifacts(out / sub, art)
