"""The arms on Ray Tune (the only module importing ``ray.tune``): one function trial per (arm, seeds).

Each trial runs :func:`coloc_ray.ablation.trial.run_trial` (fine-tune on Ray Train, then evaluation) under
``tune.with_resources``; Ray Train workers inside it hold their own fractional resources (ENVIRONMENT.md:
``Tuner(trainer)`` fails under Train V2, a function trial that fits a TorchTrainer works). Failed trials
retry (``FailureConfig(max_failures)``). Every call builds a fresh Tuner over the trials without a
``result.json``, so a resumed study never runs a finished trial twice.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from coloc_ray.ablation import layout
from coloc_ray.ablation.progress import ProgressBoard
from coloc_ray.ablation.stages import Stages
from coloc_ray.ablation.trial import TrialContext, run_trial

log = logging.getLogger(__name__)


def _trial_fn(config: dict, ctx: TrialContext, stages: Stages) -> None:
    # Keep torch to this trial's CPU share: two trials on two cores must not each spawn two threads.
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(ctx.threads)))
    # Ray Train propagates this to its controller: a worker group that cannot start (lost node, no capacity)
    # fails after this long and counts against the fine-tune's bounded retries, instead of waiting for ever.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(float(ctx.start_timeout_s))
    from coloc_ray.ablation.console import trial_log_path, trial_output
    from coloc_ray.io import scratch_root

    spec = config["trial"]
    # The trial process's own output (lm-eval / datasets progress bars, library warnings) goes to its log file on
    # this node, then to the study storage; its Ray Train workers are other processes, whose output Ray forwards
    # to the driver (the quiet console files it in <study>/logs/ray-workers.log).
    log_path = trial_log_path(scratch_root(), ctx.study.name, spec["trial_id"])
    try:
        with trial_output(log_path):
            run_trial(spec, ctx, stages, report=lambda m: tune.report(dict(m)))
    finally:
        _keep_log(ctx, spec["trial_id"], log_path)


def _keep_log(ctx: TrialContext, trial_id: str, log_path: Path) -> None:
    """Copy the trial's log to ``<storage>/logs/trials/<trial_id>/<host>.log`` (one file per node it ran on)."""
    import socket

    from coloc_ray.storage import Storage

    try:
        if log_path.is_file():
            Storage(ctx.storage).write_bytes(layout.trial_log(trial_id, f"{socket.gethostname()}-{os.getpid()}.log"),
                                             log_path.read_bytes())
    except Exception as e:  # noqa: BLE001 - losing a log must not fail a finished trial
        log.warning("could not keep the log of trial %s: %s", trial_id, e)


def _callback_cls():
    from ray import tune

    class ProgressCallback(tune.Callback):
        """Feeds Tune's trial events and reports into the study's ProgressBoard (runs in the driver)."""

        def __init__(self, board: ProgressBoard):
            self.board = board

        @staticmethod
        def _id(trial) -> str:
            return trial.config["trial"]["trial_id"]

        def on_trial_start(self, iteration, trials, trial, **info):
            self.board.update(self._id(trial), state="RUNNING")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.board.update(self._id(trial), phase=result.get("phase"), step=result.get("step"),
                              loss=result.get("loss"), eta_s=result.get("eta_s"),
                              ft_node_id=result.get("node_id"))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.board.update(self._id(trial), state="DONE", phase="done")
            self.board.flush(force=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.board.update(self._id(trial), state="ERROR")
            self.board.flush(force=True)

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.board.update(self._id(trial), state="RETRYING")

        def on_step_end(self, iteration, trials, **info):
            self.board.flush()

    return ProgressCallback


def _watchdog_cls():
    from ray import tune
    from ray.tune.stopper import Stopper

    class Watchdog(tune.Callback, Stopper):
        """Ends the study's Tune run when trials wait but none runs for longer than ``timeout_s``.

        After a node is lost the remaining trials may need more than the cluster has left; Tune would keep
        them PENDING forever. This bounds that wait: the run stops, the driver reports those trials as
        unfinished (``coloc resume`` picks them up once the cluster is whole again).
        """

        def __init__(self, timeout_s: float):
            self.timeout_s, self.idle_since, self.fired = timeout_s, None, False

        def on_step_end(self, iteration, trials, **info):
            import time

            waiting = any(t.status == "PENDING" for t in trials)
            running = any(t.status == "RUNNING" for t in trials)
            if waiting and not running:
                self.idle_since = self.idle_since or time.monotonic()
                if time.monotonic() - self.idle_since > self.timeout_s and not self.fired:
                    self.fired = True
                    log.error("no trial could start for %.0f s (resources.start_timeout_s): stopping; the cluster "
                              "lacks the resources the pending trials need", self.timeout_s)
            else:
                self.idle_since = None

        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return self.fired

    return Watchdog


def trial_resources(resources: dict) -> dict:
    """What the trial function itself holds (its Ray Train workers hold cpus/gpus_per_worker on top)."""
    return {"cpu": resources["cpus_per_trial"], "gpu": resources["gpus_per_trial"]}


def run_trials(specs: list[dict], ctx: TrialContext, stages: Stages, *, board: ProgressBoard, storage_path: str | Path,
               name: str, max_concurrent: int, max_failures: int, pending_timeout_s: float = 300.0
               ) -> dict[str, str]:
    """Run ``specs`` as Tune trials; returns ``{trial_id: "DONE" | "ERROR: <message>"}``.

    Args:
        specs: trial specs (dicts) still to run.
        ctx: the trial context of :func:`run_trial`.
        stages: the stage functions, shipped to the trial workers.
        board: progress sink (driver side).
        storage_path: Tune's experiment storage (absolute local path or URI).
        name: Tune experiment name (unique per launch).
        max_concurrent: trials at once.
        max_failures: retries per trial.
        pending_timeout_s: stop when trials wait but none has run for this long (see ``Watchdog``).
    """
    from ray import tune

    if not specs:
        return {}
    res = trial_resources(ctx.study.resources.model_dump())
    watchdog = _watchdog_cls()(pending_timeout_s)
    trainable = tune.with_resources(tune.with_parameters(_trial_fn, ctx=ctx, stages=stages), res)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(specs)},
        # reuse_actors: a finished trial's process takes the next trial (no fresh worker + imports per trial).
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True,
                                    trial_name_creator=lambda t: t.config["trial"]["trial_id"],
                                    trial_dirname_creator=lambda t: t.config["trial"]["trial_id"]),
        run_config=tune.RunConfig(name=name, storage_path=_abs(storage_path),
                                  failure_config=tune.FailureConfig(max_failures=max_failures),
                                  callbacks=[_callback_cls()(board), watchdog], stop=watchdog, verbose=0))
    try:
        grid = tuner.fit()
    except Exception as e:  # e.g. Ray's OOM killer took a Tune-internal actor: the whole fit() raises
        log.error("Ray Tune stopped: %s", str(e).strip().splitlines()[0][:300])
        board.flush(force=True)
        return {s["trial_id"]: f"ERROR: Tune stopped ({type(e).__name__})" for s in specs}
    board.flush(force=True)
    out = {}
    for r in grid:
        tid = r.config["trial"]["trial_id"]
        out[tid] = "DONE" if r.error is None else f"ERROR: {str(r.error).strip().splitlines()[-1][:300]}"
    return out


def _abs(p: str | Path) -> str:
    s = str(p)
    return s if "://" in s else os.path.abspath(s)
