"""Fixtures for the study tests: a tiny study with fast fake stages, shipped to Ray workers by value."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO


@pytest.fixture(scope="session")
def fakes_by_value():
    """The fake stages module, pickled by value: Ray workers cannot import ``tests``."""
    from ray import cloudpickle

    from tests.ablation import fakes

    cloudpickle.register_pickle_by_value(fakes)
    return fakes


def tiny_study_dict(tmp, **over) -> dict:
    """tiny_test.yaml with its outputs and MLflow store under ``tmp``."""
    d = yaml.safe_load((REPO / "studies" / "tiny_test.yaml").read_text())
    d["output_dir"] = str(tmp / "study")
    d["tracking_uri"] = f"sqlite:///{tmp / 'mlruns.db'}"
    d.update(over)
    return d


def fake_knobs(tmp, **over) -> dict:
    """The fake stages' knobs (tests/ablation/fakes.py): fine-tune calls logged to ``tmp/calls.log``, 1 s each."""
    return {"calls": str(tmp / "calls.log"), "sleep": 1.0, **over}


def fake_env(tmp, **over) -> dict:
    """The same knobs as environment variables, for a study run in a subprocess."""
    return {f"COLOC_FAKE_{k.upper()}": str(v) for k, v in fake_knobs(tmp, **over).items()}


def mlflow_children(uri: str, parent_run_id: str) -> list:
    """Runs nested directly under ``parent_run_id`` (tests may talk to MLflow directly)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=1000)
