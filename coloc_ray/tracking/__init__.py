"""MLflow tracking. :mod:`coloc_ray.tracking.mlflow_run` is the only module that imports mlflow."""

from coloc_ray.tracking.mlflow_run import Tracker, default_tracking_uri, ensure_experiment, read_run

__all__ = ["Tracker", "default_tracking_uri", "ensure_experiment", "read_run"]
