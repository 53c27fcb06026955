"""``coloc analyze`` end to end (the real console script) and its MLflow run read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from tests.conftest import run_cli

L = 12


def _probes(tmp_path, n_sens=L, n_rope=L, model_rope="tiny-gqa"):
    rng = np.random.default_rng(0)
    depth = np.arange(max(n_sens, n_rope), dtype=float)
    sens = {"model": "tiny-gqa", "num_layers": n_sens, "top_k": 3, "pooling": "mean",
            "scores": (depth[:n_sens] + rng.normal(0, 2, n_sens)).tolist()}
    rope = {"model": model_rope, "num_layers": n_rope, "factors": [2.0], "base_loss": 3.0,
            "scores": (-depth[:n_rope] + rng.normal(0, 2, n_rope)).tolist(),
            "interpolated": [False] * n_rope}
    ps, pr = tmp_path / "sensitivity.json", tmp_path / "rope_influence.json"
    ps.write_text(json.dumps(sens))
    pr.write_text(json.dumps(rope))
    return ps, pr, sens, rope


def _summary(stdout: str) -> dict:
    # MLflow may print "View run ..." lines around ours (HTTP stores): take the JSON block.
    start = stdout.index("{\n")
    return json.loads(stdout[start:stdout.index("\n}", start) + 2])


def test_analyze_cli_writes_outputs_and_mlflow_run(tmp_path, tracking_uri):
    from coloc_ray.tracking import read_run

    ps, pr, sens, rope = _probes(tmp_path)
    out = tmp_path / "out"
    proc = run_cli("analyze", "--sensitivity", str(ps), "--rope", str(pr), "--n-perm", "999",
                   "--seed", "1", "--tracking-uri", tracking_uri, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((out / "analysis.json").read_text())
    ref = stats.spearmanr(sens["scores"], rope["scores"])
    assert rec["spearman_r"] == pytest.approx(ref.statistic)
    assert rec["spearman_p"] == pytest.approx(ref.pvalue)
    assert rec["top_k"] == 3 and rec["num_layers"] == L  # top_k taken from the sensitivity file
    assert rec["expected_overlap"] == pytest.approx(9 / L)
    for png in ("profiles.png", "rank_scatter.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    summary = _summary(proc.stdout)
    run = read_run(summary["mlflow_run_id"], tracking_uri)
    assert run["status"] == "FINISHED"
    assert run["params"]["top_k"] == "3" and run["params"]["n_perm"] == "999"
    assert run["metrics"]["spearman_r"] == pytest.approx(ref.statistic)
    assert run["metrics"]["circular_shift_p"] == pytest.approx(rec["circular_shift_p"])
    assert "analysis" in run["artifacts"]


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"),
    ("badjson", "not valid JSON"),
    ("lengths", "12 layers but rope influence has 10"),
    ("model", "probe the same model"),
    ("topk", "top_k=20"),
])
def test_analyze_cli_bad_input_exit_2_nothing_written(tmp_path, case, match):
    ps, pr, *_ = _probes(tmp_path, n_rope=10 if case == "lengths" else L,
                         model_rope="smollm2-135m" if case == "model" else "tiny-gqa")
    if case == "missing":
        pr = tmp_path / "nope.json"
    if case == "badjson":
        pr.write_text("{not json")
    extra = ["--top-k", "20"] if case == "topk" else []
    out = tmp_path / "out"
    proc = run_cli("analyze", "--sensitivity", str(ps), "--rope", str(pr), "--no-tracking",
                   "--out", str(out), *extra, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coloc: error:") and match in lines[0], proc.stderr
    assert not out.exists() and not (tmp_path / "mlruns.db").exists()


def test_run_analysis_nests_its_run_under_a_callers_open_run(tmp_path, tracking_uri):
    from coloc_ray.analysis.run import run_analysis
    from coloc_ray.tracking import Tracker, read_run
    from coloc_ray.tracking.mlflow_run import metric_history

    _, _, sens, rope = _probes(tmp_path)
    with Tracker(tracking_uri, run_name="spine") as t:
        t.log_params({"top_k": 10, "model": "something-else"})  # the caller's params must not collide
        rec = run_analysis(sens, rope, top_k=4, out_dir=tmp_path / "a", tracker=t, n_perm=200)
        assert read_run(t.run_id, tracking_uri)["status"] == "RUNNING"  # the caller owns its run
    child = read_run(rec["mlflow_run_id"], tracking_uri)
    assert rec["mlflow_run_id"] != t.run_id and child["tags"]["mlflow.parentRunId"] == t.run_id
    assert child["status"] == "FINISHED" and child["params"]["top_k"] == "4"
    assert rec["sensitive_layers"] == sorted(np.argsort(-np.array(sens["scores"]))[:4].tolist())
    hist = metric_history(rec["mlflow_run_id"], "sensitivity", tracking_uri)
    assert [v for _, v in hist] == pytest.approx(sens["scores"])
    saved = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert saved["mlflow_run_id"] == rec["mlflow_run_id"]


@pytest.mark.mlflow_server
def test_analyze_cli_against_a_real_mlflow_server(tmp_path, mlflow_server):
    from coloc_ray.tracking import read_run

    ps, pr, sens, rope = _probes(tmp_path)
    proc = run_cli("analyze", "--sensitivity", str(ps), "--rope", str(pr), "--n-perm", "200",
                   "--tracking-uri", mlflow_server, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_id = _summary(proc.stdout)["mlflow_run_id"]
    run = read_run(run_id, mlflow_server)
    assert run["status"] == "FINISHED"
    assert run["metrics"]["spearman_r"] == pytest.approx(stats.spearmanr(sens["scores"], rope["scores"]).statistic)
    from mlflow.tracking import MlflowClient

    names = {a.path for a in MlflowClient(mlflow_server).list_artifacts(run_id, "analysis")}
    assert names == {"analysis/analysis.json", "analysis/profiles.png", "analysis/rank_scatter.png"}
