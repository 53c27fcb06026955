"""Job submission pieces that need no cluster: token lookup, runtime_env, log parsing, early errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coloc_ray.ablation import submit as sb
from coloc_ray.errors import UserError
from tests.conftest import REPO, free_port, run_cli

TINY = REPO / "studies" / "tiny_test.yaml"


@pytest.fixture()
def no_auth_env(monkeypatch):
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)


def test_token_precedence(tmp_path, monkeypatch, no_auth_env):
    f1, f2 = tmp_path / "a", tmp_path / "b"
    f1.write_text("tok-file\n")
    f2.write_text("tok-path")
    assert sb.read_token() is None
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(f2))
    assert sb.read_token() == "tok-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok-env")
    assert sb.read_token() == "tok-env"
    assert sb.read_token(str(f1)) == "tok-file"  # --token-file wins, stripped
    with pytest.raises(UserError, match="does not exist"):
        sb.read_token(str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        sb.read_token(str(tmp_path / "empty"))


def test_runtime_env_loopback_and_tracking_never_the_token(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret-token")
    local = sb.runtime_env(REPO, "http://127.0.0.1:8265", "sqlite:////x/m.db", {"A": "1"})
    assert local["env_vars"]["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert local["env_vars"]["MLFLOW_TRACKING_URI"] == "sqlite:////x/m.db" and local["env_vars"]["A"] == "1"
    assert {".venv", ".git", "/runs", "/mlruns", "*.safetensors"} <= set(local["excludes"])
    remote = sb.runtime_env(REPO, "http://10.0.0.5:8265")
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in remote["env_vars"]
    assert "s3cret-token" not in json.dumps([local, remote])


def test_bad_address_and_unreachable_are_user_errors(no_auth_env):
    with pytest.raises(UserError, match="dashboard URL"):
        sb.connect("127.0.0.1:6379")
    with pytest.raises(UserError, match="no Ray dashboard answers"):
        sb.connect(f"http://127.0.0.1:{free_port()}")


def test_trial_table_reads_progress_json(tmp_path):
    from coloc_ray.ablation.progress import ProgressBoard, render_progress

    info = {"metadata": {"coloc.study_dir": str(tmp_path)}}
    assert "not started" in sb.trial_table(info)  # the storage is here, no progress.json yet
    board = ProgressBoard(tmp_path, [{"trial_id": "D-c124-t0", "arm": "D", "control_seed": 124, "train_seed": 0}],
                          total_steps=2, echo=False)
    board.update("D-c124-t0", state="RUNNING", phase="finetune", step=1)
    board.flush(force=True)
    got = sb.trial_table(info)
    assert got == render_progress(tmp_path) and "D-c124-t0" in got and "RUNNING" in got and "1/2" in got
    board.update("D-c124-t0", state="DONE", step=2)
    board.flush(force=True)
    assert "DONE" in sb.trial_table(info) and "RUNNING" not in sb.trial_table(info)  # re-read, not cached


def test_trial_table_unreadable_storage_is_one_line_with_the_fix(tmp_path):
    gone = {"metadata": {"coloc.study_dir": str(tmp_path / "on-the-cluster-only")}}
    relative = {"metadata": {"coloc.study_dir": "runs/x"}}
    (tmp_path / "progress.json").write_text('{"trials": [')  # half-written
    broken = {"metadata": {"coloc.study_dir": str(tmp_path)}}
    for info in (gone, relative, broken):
        msg = sb.trial_table(info)
        assert len(msg.splitlines()) == 1 and "progress.json is not readable here" in msg and "coloc logs" in msg
    assert "not sent by coloc submit" in sb.trial_table({"metadata": {}})


def test_study_outside_checkout_is_staged(tmp_path):
    proj = tmp_path / "proj"  # a small stand-in checkout with one of each kind of file
    for f in ("coloc_ray/ablation/submit.py", "coloc_ray/runs/keep.py", "studies/a.yaml", "studies/a/out.json",
              "runs/x/result.json", ".venv/bin/python", ".git/HEAD", "w/model.safetensors", "mlruns.db"):
        (proj / f).parent.mkdir(parents=True, exist_ok=True)
        (proj / f).write_text("x")
    study = tmp_path / "elsewhere.yaml"
    study.write_text(TINY.read_text())
    work, rel = sb.stage_working_dir(proj, study)
    try:
        assert rel == ".coloc_submit/elsewhere.yaml" and (work / rel).read_text() == TINY.read_text()
        kept = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
        # "/runs" is anchored: a package dir named runs stays; study outputs, venvs, git, weights, DBs go.
        assert kept == [".coloc_submit/elsewhere.yaml", "coloc_ray/ablation/submit.py", "coloc_ray/runs/keep.py",
                        "studies/a.yaml"]
    finally:
        import shutil

        shutil.rmtree(work.parent)
    assert sb._study_in_project(TINY, REPO) == "studies/tiny_test.yaml"


def test_invalid_study_fails_before_contacting_the_cluster(tmp_path, no_auth_env):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("k: 2", "k: 3"))  # L = 4 < 2k: R cannot be drawn
    with pytest.raises(UserError, match="layer_sets.k"):
        sb.submit_study(bad, f"http://127.0.0.1:{free_port()}")


def test_cli_submit_errors_exit_2(tmp_path):
    env = {"RAY_AUTH_MODE": "", "RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": ""}
    r = run_cli("submit", str(TINY), "--address", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path / "o"),
                env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "no Ray dashboard answers" in r.stderr and "Traceback" not in r.stderr
    # no --out and no output_dir: runs/<name> would be in Ray's temporary job dir; refused before any contact
    r = run_cli("submit", str(TINY), "--address", f"http://127.0.0.1:{free_port()}", env=env, timeout=120)
    assert r.returncode == 2 and "temporary job directory" in r.stderr and "--out s3://" in r.stderr
    r = run_cli("submit", str(TINY), "--env", "NOEQUALS", "--address", "http://127.0.0.1:1", env=env, timeout=120)
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr


def test_lost_connection_mid_session_is_a_user_error():
    import requests

    def drop():
        raise requests.exceptions.ConnectionError("connection reset")

    with pytest.raises(UserError, match="lost the Ray dashboard"):
        sb._call("http://127.0.0.1:8265", drop)


SECRETS = [".env", "cluster/.env.prod", ".netrc", "hf_token", "conf/ray_auth_token.txt", "certs/server.pem",
           "keys/id_ed25519", "keys/id_rsa.pub", ".coloc/ray_token", "nested/.aws/credentials", "notes/secret.yaml",
           "ignored_by_git/data.json", "debug.log", "sub/local.cfg"]
KEEP = ["coloc_ray/ablation/submit.py", "coloc_ray/tokenize_utils.py", "studies/a.yaml", ".gitignore",
        "sub/.gitignore", "README.md"]


def _stand_in_checkout(root: Path) -> Path:
    """A git checkout holding code, planted credentials, and files its .gitignore files ignore."""
    import subprocess

    for f in SECRETS + KEEP:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x")
    (root / ".gitignore").write_text("ignored_by_git/\n*.log\n")
    (root / "sub" / ".gitignore").write_text("local.cfg\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def test_upload_leaves_out_secrets_and_git_ignored_files(tmp_path, monkeypatch):
    proj = _stand_in_checkout(tmp_path / "proj")
    monkeypatch.setenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1")  # even when Ray is told to skip .gitignore
    renv = sb.runtime_env(proj, "http://127.0.0.1:8265")
    uploaded = sb.upload_list(proj, renv["excludes"])
    assert sorted(uploaded) == sorted(KEEP)  # the code ships, not one planted secret or ignored file
    # the control: Ray's own defaults alone would upload every planted secret that git does not ignore
    bare = sb.upload_list(proj, [])
    assert {".env", ".netrc", "hf_token", "certs/server.pem", "keys/id_ed25519", ".coloc/ray_token"} <= set(bare)


def test_staged_copy_leaves_out_secrets(tmp_path):
    proj = _stand_in_checkout(tmp_path / "proj")
    study = tmp_path / "elsewhere.yaml"
    study.write_text(TINY.read_text())
    work, rel = sb.stage_working_dir(proj, study)
    try:
        kept = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file() and ".git/" not in
                      p.relative_to(work).as_posix() + "/")
        assert kept == sorted(KEEP + [rel])
        assert kept == sorted(sb.upload_list(proj, sb.upload_excludes(proj)) + [rel])  # the same packer as Ray's
    finally:
        import shutil

        shutil.rmtree(work.parent)


@pytest.mark.parametrize("name", ["HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD",
                                  "WANDB_API_KEY", "AWS_SHARED_CREDENTIALS_FILE", "GITHUB_TOKEN", "OPENAI_APIKEY",
                                  "db_password", "AWS_SESSION_TOKEN"])
def test_secret_looking_env_names_are_refused(name, no_auth_env):
    with pytest.raises(UserError, match=f"--env {name}: looks like a credential.*nodes"):
        sb.submit_study(TINY, f"http://127.0.0.1:{free_port()}", env={name: "v"})


@pytest.mark.parametrize("name", ["TOKENIZERS_PARALLELISM", "HF_HOME", "OMP_NUM_THREADS", "MONKEY_MODE",
                                  "MLFLOW_TRACKING_USERNAME", "RAY_AUTH_MODE"])
def test_plain_env_names_pass(name):
    assert not sb.looks_secret(name)
    sb.check_secrets({name: "v"}, "http://mlflow:5000")


def test_password_in_tracking_uri_is_refused_and_cli_exits_2(tmp_path):
    with pytest.raises(UserError, match="holds a password"):
        sb.check_secrets(None, "http://alice:hunter2@mlflow:5000")
    env = {"RAY_AUTH_MODE": "", "RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": ""}
    r = run_cli("submit", str(TINY), "--env", "HF_TOKEN=hf_abc", "--address", "http://127.0.0.1:1", env=env,
                timeout=120)
    assert r.returncode == 2 and "looks like a credential" in r.stderr and "hf_abc" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_dry_run_lists_the_upload_and_contacts_nothing(no_auth_env):
    r = run_cli("submit", str(TINY), "--dry-run", "--out", "s3://bucket/studies/tiny", "--address",
                f"http://127.0.0.1:{free_port()}", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    files = [ln.strip() for ln in r.stdout.splitlines() if ln.startswith("  ")]
    assert "coloc_ray/ablation/submit.py" in files and "studies/tiny_test.yaml" in files
    assert not [f for f in files if f.startswith((".venv", ".git/")) or f.endswith((".safetensors", ".env"))]
    assert r.stdout.startswith("entrypoint: coloc run studies/tiny_test.yaml --address auto --out s3://bucket/")
