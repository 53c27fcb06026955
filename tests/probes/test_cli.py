"""``coloc probe`` end to end: JSON outputs and per-layer MLflow series read back with metric_history."""

from __future__ import annotations

import json

import pytest

from coloc_ray.cli import main
from coloc_ray.tracking.mlflow_run import metric_history, read_run
from tests.conftest import run_cli


def _texts_file(path):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a b c d e f g " * 20, "1 2 3 4 5 " * 30]))
    return path


def test_probe_cli_writes_json_and_logs_per_layer_series(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = tmp_path / "out"
    r = run_cli("probe", "sensitivity", "--model", "tiny-gqa", "--num-workers", "0", "--pooling", "last",
                "--top-k", "2", "--tracking-uri", uri, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    sens = json.loads((out / "sensitivity.json").read_text())
    assert sens["num_layers"] == 4 and sens["pooling"] == "last" and len(sens["top_layers"]) == 2
    hist = metric_history(sens["mlflow_run_id"], "sensitivity", uri)
    assert [s for s, _ in hist] == [0, 1, 2, 3]
    assert [v for _, v in hist] == pytest.approx(sens["scores"], rel=1e-12)
    run = read_run(sens["mlflow_run_id"], uri)
    assert run["status"] == "FINISHED" and "sensitivity.json" in run["artifacts"]
    assert run["params"]["config.pooling"] == "last" and "versions.torch" in run["params"]

    # The second command runs in-process (same code path, no second interpreter start-up).
    rc = main(["probe", "rope", "--model", "tiny-gqa", "--num-workers", "0", "--eval-data",
               str(_texts_file(tmp_path / "t.jsonl")), "--factor", "2", "4", "--layers", "0,3", "--max-len", "64",
               "--tracking-uri", uri, "--out", str(out)])
    assert rc == 0
    rope = json.loads((out / "rope_influence.json").read_text())
    assert rope["factors"] == [2.0, 4.0] and rope["interpolated"] == [False, True, True, False]
    hist = metric_history(rope["mlflow_run_id"], "rope_influence", uri)
    assert [v for _, v in hist] == pytest.approx(rope["scores"], rel=1e-12)
    assert [s for s, _ in metric_history(rope["mlflow_run_id"], "rope_loss.f4.0", uri)] == [0, 1, 2, 3]
    assert (out / "sensitivity.json").exists()  # the second command left the first one's output alone


@pytest.mark.parametrize("args, needle", [
    (["rope", "--layers", "0,9"], "--layers"),
    (["rope", "--layers", "a,b"], "--layers"),
    (["rope", "--factor", "0"], "--factor"),
    (["rope", "--factor", "x"], "--factor"),
    (["rope", "--max-len", "1"], "--max-len"),
    (["rope", "--eval-data", "NOFILE.jsonl"], "no such file"),
    (["sensitivity", "--pooling", "max"], "--pooling"),
    (["sensitivity", "--top-k", "9"], "--top-k"),
])
def test_bad_probe_arguments_exit_2_before_any_work(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)  # the default MLflow store would land here: it must not be created
    out = tmp_path / "out"
    rc = main(["probe", args[0], "--model", "tiny-gqa", "--num-workers", "0", *args[1:], "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coloc: error:") and needle in lines[0], err
    assert not out.exists() and list(tmp_path.iterdir()) == []
