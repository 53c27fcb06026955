"""The one place that talks to MLflow (STYLE 5): runs, params, per-step metrics, artifacts.

Default store: a SQLite file ``mlruns.db`` in the working directory (artifacts in ``./mlartifacts``);
``--tracking-uri`` points at a server (``http://127.0.0.1:5000``) or another store.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

DEFAULT_EXPERIMENT = "coloc-ray"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlruns.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            # MLflow itself truncates values over its 6000-character cap (MLFLOW_TRUNCATE_LONG_VALUES).
            out[key] = json.dumps(v, default=str) if isinstance(v, (list, tuple)) else str(v)
    return out


def ensure_experiment(tracking_uri: str | None, name: str = DEFAULT_EXPERIMENT) -> str:
    """Create the experiment once (in the driver: concurrent trials creating it would race)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):
        artifact_location = (Path(uri.split(":///", 1)[1]).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        return client.get_experiment_by_name(name).experiment_id


class Tracker:
    """One MLflow run. Use as a context manager; the run ends FINISHED, or FAILED on an exception.

    Nested runs: pass ``parent_run_id``; the child is tagged ``mlflow.parentRunId`` so the UI nests it.
    ``enabled=False`` gives a no-op tracker (non-zero ranks, ``--no-tracking``).
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                 run_name: str | None = None, parent_run_id: str | None = None,
                 tags: Mapping[str, str] | None = None, run_id: str | None = None, enabled: bool = True):
        self.enabled = enabled
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.experiment = experiment
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.tags = dict(tags or {})
        self.run_id = run_id
        self._client = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Tracker":
        if not self.enabled:
            return self
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        if self.run_id is None:
            exp_id = ensure_experiment(self.tracking_uri, self.experiment)
            tags = dict(self.tags)
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run = self._client.create_run(exp_id, run_name=self.run_name, tags=tags)
            self.run_id = run.info.run_id
        return self

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self._client is not None and self.run_id:
            self._client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> "Tracker":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FAILED" if exc_type else "FINISHED")

    def child(self, run_name: str, tags: Mapping[str, str] | None = None) -> "Tracker":
        """A nested run under this one (same store and experiment)."""
        return Tracker(self.tracking_uri, self.experiment, run_name, parent_run_id=self.run_id,
                       tags=tags, enabled=self.enabled)

    # -- logging -----------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        # MlflowClient.log_batch splits into MLflow's per-request limits itself (100 params, 1000 metrics).
        # Keys over MLflow's 250-character cap are an error there, not truncated: shorten them here.
        self._client.log_batch(self.run_id, params=[Param(k[:250], v) for k, v in _flatten(params).items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            for k, v in tags.items():
                self._client.set_tag(self.run_id, k, str(v))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        self._log_points([(k, v, step or 0) for k, v in metrics.items() if v is not None])

    def log_series(self, name: str, values, start_step: int = 0) -> None:
        """Log ``values[i]`` as metric ``name`` at step ``start_step + i`` (e.g. one point per layer)."""
        if not self.enabled:
            return
        self._log_points([(name, v, start_step + i) for i, v in enumerate(values)])

    def _log_points(self, points: list[tuple[str, float, int]]) -> None:
        """One ``log_batch`` for ``(key, value, step)`` points: MlflowClient chunks it to MLflow's limits."""
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[Metric(_metric_key(k), float(v), ts, s) for k, v, s in points])

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        if not self.enabled:
            return
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / Path(artifact_file).name
            p.write_text(json.dumps(obj, indent=2, default=str))
            parent = str(Path(artifact_file).parent)
            self._client.log_artifact(self.run_id, str(p), None if parent == "." else parent)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._client.log_artifacts(self.run_id, str(directory), artifact_path)


def _metric_key(k: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space / only.
    return "".join(c if (c.isalnum() or c in "_-. /") else "_" for c in str(k))


def read_run(run_id: str, tracking_uri: str | None = None) -> dict:
    """Read a run back (params, latest metrics, tags, artifact paths): for tests and reports."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    run = client.get_run(run_id)
    arts = [a.path for a in client.list_artifacts(run_id)]
    return {"params": dict(run.data.params), "metrics": dict(run.data.metrics), "tags": dict(run.data.tags),
            "status": run.info.status, "artifacts": arts, "experiment_id": run.info.experiment_id}


def metric_history(run_id: str, key: str, tracking_uri: str | None = None) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
