"""Submission to a real token-auth Ray head on 127.0.0.1: refused without the token, the tiny study with it.

The head is ``tests/cluster/conftest.py::ray_head`` (own ports, own token, stopped by PID).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TINY = REPO / "studies" / "tiny_test.yaml"


def _env(head, with_token: bool) -> dict:
    """Client env: loopback settings; the token only where asked (and never ~/.ray's)."""
    env = {k: v for k, v in head["env"].items()}
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env[k] = ""
    if with_token:
        env["RAY_AUTH_TOKEN_PATH"] = head["token_file"]
    return env


def test_submission_without_token_is_refused(ray_head, tmp_path):
    r = run_cli("submit", str(TINY), "--address", ray_head["address"], "--out", str(tmp_path / "study"),
                env=_env(ray_head, False), timeout=180)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "requires a token: pass --token-file or set RAY_AUTH_TOKEN_PATH" in r.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("0" * 64)
    r = run_cli("status", "--address", ray_head["address"], "--token-file", str(wrong), env=_env(ray_head, False),
                timeout=120)
    assert r.returncode == 2 and "refused the token" in r.stderr, r.stderr


def _small_tiny(tmp_path) -> Path:
    """studies/tiny_test.yaml cut to 2 trials and 1 benchmark (keeps this test to a few CPU-minutes).

    It is written outside the checkout, so the submission also exercises the staged working_dir.
    """
    d = yaml.safe_load(TINY.read_text())
    d.update(arms=["A", "D"], control_seeds=[123], train_seeds=[0])
    d["evaluation"].update(benchmarks=["arc_challenge"], limit=1)
    # tiny-gqa's tokenizer is byte-level: at 64 tokens no training record keeps an assistant token.
    d["training"]["max_len"] = max(d["training"]["max_len"], 256)
    p = tmp_path / "tiny_submit.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_tiny_study_runs_as_a_ray_job(ray_head, tmp_path):
    from mlflow.tracking import MlflowClient

    from coloc_ray.io import read_json

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = tmp_path / "study"
    env = _env(ray_head, False)
    args = ["--address", ray_head["address"], "--token-file", ray_head["token_file"]]
    r = run_cli("submit", str(_small_tiny(tmp_path)), *args, "--tracking-uri", uri, "--out", str(out),
                "--env", "HF_HUB_OFFLINE=1", "--wait", "--timeout", "1500", env=env, timeout=1600)
    job_id = r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
    assert r.returncode == 0, f"job {job_id} did not succeed:\n{r.stderr[-4000:]}"
    assert job_id.startswith("coloc-tiny_test-")

    st = run_cli("status", job_id, *args, env=env, timeout=120)
    assert st.returncode == 0, st.stderr
    assert f"{job_id}: SUCCEEDED" in st.stdout
    progress = read_json(out / "progress.json")
    trial_ids = [t["trial_id"] for t in progress["trials"]]
    assert all(t in st.stdout for t in trial_ids) and "DONE" in st.stdout  # the table, from progress.json
    lst = run_cli("status", *args, env=env, timeout=120)
    assert job_id in lst.stdout and "tiny_test" in lst.stdout
    logs = run_cli("logs", job_id, *args, env=env, timeout=120)
    assert logs.returncode == 0 and "tiny_test" in logs.stdout
    follow = run_cli("logs", job_id, "--follow", *args, env=env, timeout=120)  # a finished job: streams, then ends
    assert follow.returncode == 0 and "tiny_test" in follow.stdout

    # MLflow: one study run, and every trial's recorded run nested under it.
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("coloc-tiny_test")
    runs = {x.info.run_id: x for x in client.search_runs([exp.experiment_id], max_results=1000)}
    parent = [x for x in runs.values() if x.info.run_name == "tiny_test" and "mlflow.parentRunId" not in x.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    results = [read_json(p) for p in out.glob("trials/*/result.json")]
    assert len(results) == len([t for t in trial_ids if not t.startswith("base")]) >= 2
    for res in results:
        run = runs[res["mlflow_run_id"]]
        assert run.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id, res["trial_id"]


def test_unknown_job_id_is_a_user_error(ray_head):
    env = _env(ray_head, True)
    r = run_cli("status", "coloc-nope-1", "--address", ray_head["address"], env=env, timeout=120)
    assert r.returncode == 2 and "no job 'coloc-nope-1'" in r.stderr, r.stderr
    assert os.path.exists(ray_head["token_file"])
