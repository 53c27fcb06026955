"""A trial's evaluation on GPUs of its own: a Ray actor that holds them, started within a bounded wait.

Why not in the trial function: a trial function that held a GPU for its evaluation would hold it idle through
the whole fine-tune; one that asked for none sees every GPU of its node (Ray leaves ``CUDA_VISIBLE_DEVICES``
unset for a zero-GPU actor) and would evaluate on ``cuda:0`` on top of other trials' training. So the
evaluation runs in an actor that asks for ``resources["GPU"]`` GPUs once the fine-tune has released its
workers'. If the cluster cannot give them within ``start_timeout_s`` (a lost node, a cluster too small) the
trial fails with that reason and Tune retries it; it never waits forever.

The adapter reaches the actor through the study storage (it may land on another node); the evaluation's
output folder comes back as file contents (per-item results are small) and the trial uploads it with the rest.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


class EvalStartTimeout(RuntimeError):
    """The evaluation's GPUs could not be had within the bounded wait."""


def _runner_cls():
    import ray

    @ray.remote(max_restarts=0)
    class EvalRunner:
        """Holds the evaluation's GPUs while it runs; one per trial evaluation."""

        def ready(self) -> dict:
            import os

            return {"node_id": ray.get_runtime_context().get_node_id(),
                    "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

        def run(self, stages, cfg, adapter_uri, tracking: dict) -> tuple[dict, dict[str, bytes]]:
            from coloc_ray.io import scratch_root
            from coloc_ray.storage import Storage
            from coloc_ray.tracking import Tracker

            work = Path(tempfile.mkdtemp(prefix="coloc-eval-", dir=scratch_root()))
            try:
                if adapter_uri:
                    parent, name = adapter_uri.rsplit("/", 1)
                    Storage(parent).download(name, work / "adapter")
                    cfg = cfg.model_copy(update={"adapter": str(work / "adapter")})
                tr = Tracker(tracking.get("uri"), run_id=tracking.get("run_id"),
                             enabled=bool(tracking.get("run_id"))).start()
                ev = stages.evaluate(cfg, work / "eval", tr)
                files = {p.relative_to(work / "eval").as_posix(): p.read_bytes()
                         for p in sorted((work / "eval").rglob("*")) if p.is_file()}
                return ev, files
            finally:
                shutil.rmtree(work, ignore_errors=True)

    return EvalRunner


def evaluate_on_gpu(stages, cfg, out: Path, tracker, resources: dict, adapter_uri: str | None = None
                    ) -> tuple[dict, dict]:
    """Run ``stages.evaluate(cfg, out, ...)`` in an actor holding ``resources`` (``GPU``, ``CPU``).

    Args:
        adapter_uri: where the trial uploaded its adapter (storage URI or shared path); None for the base model.
        resources: ``{"GPU": g, "CPU": c, "start_timeout_s": s}``.

    Raises:
        EvalStartTimeout: the actor did not start within ``start_timeout_s``.
    """
    import ray

    timeout = float(resources.get("start_timeout_s", 600))
    # "DEFAULT": outside the trial's own placement group (Tune's trials capture their children into it, and it
    # holds only the trial function's CPUs); the evaluation's GPUs are its own reservation.
    actor = _runner_cls().options(num_gpus=float(resources["GPU"]), num_cpus=float(resources.get("CPU", 1)),
                                  scheduling_strategy="DEFAULT").remote()
    try:
        try:
            where = ray.get(actor.ready.remote(), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise EvalStartTimeout(f"evaluation could not get {resources['GPU']} GPU(s) within {timeout:.0f} s "
                                   "(resources.start_timeout_s); the cluster lacks free GPUs") from None
        start = time.time()
        ev, files = ray.get(actor.run.remote(stages, cfg, adapter_uri,
                                             {"uri": tracker.tracking_uri if tracker.enabled else None,
                                              "run_id": tracker.run_id if tracker.enabled else None}))
        for rel, data in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
        return ev, {**where, "start": start, "end": time.time()}
    finally:
        ray.kill(actor, no_restart=True)
