"""Interrupt test: SIGKILL the ``coloc run`` driver mid-study, then ``coloc resume`` finishes it.

No trial that had finished runs again, every trial ends with a result and exactly one FINISHED MLflow run
nested under the study's run, and no process of the killed run survives (killed here by PID).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.ablation.conftest import fake_env, mlflow_children, tiny_study_dict
from tests.conftest import REPO

pytestmark = pytest.mark.ray

TRIALS = ["base", "A-t0", "D-c123-t0"]


# The ``coloc`` command on the fake stages (tests/ablation/fakes.py runs coloc_ray.cli.main with them).
FAKE_COLOC = [sys.executable, "-m", "tests.ablation.fakes"]


def _pids_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (our private Ray temp dir names every Ray process)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if text in (p / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(p.name))
            except OSError:
                continue
    return out


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _session_pids(sid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: session id
                out.append(int(p.name))
    return out


@pytest.fixture()
def ray_tmp():
    # Short path: Ray's unix sockets live under it (108-byte limit), and it names every Ray process we start.
    d = tempfile.mkdtemp(prefix="cr-", dir="/tmp")
    yield d
    _kill_all(_pids_mentioning(d))
    shutil.rmtree(d, ignore_errors=True)


def _result_files(study: Path) -> dict[str, float]:
    out = {}
    for tid in TRIALS:
        p = study / ("base" if tid == "base" else f"trials/{tid}") / "result.json"
        if p.is_file():
            out[tid] = p.stat().st_mtime
    return out


def test_sigkill_driver_then_resume(tmp_path, ray_token_env, ray_tmp):
    d = tiny_study_dict(tmp_path, arms=["A", "D"], control_seeds=[123])
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(d))
    study = Path(d["output_dir"])
    env = {**os.environ, **fake_env(tmp_path, sleep=4.0), "RAY_TMPDIR": ray_tmp,
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([*FAKE_COLOC, "run", str(spec)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not _result_files(study) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill_all(_session_pids(proc.pid) + _pids_mentioning(ray_tmp))
    killed_at = time.time()
    before = _result_files(study)
    assert 1 <= len(before) < len(TRIALS), (before, (tmp_path / "run.log").read_text()[-3000:])
    time.sleep(1)
    assert not _pids_mentioning(ray_tmp), "processes of the killed run survived"

    r = subprocess.run([*FAKE_COLOC, "resume", str(study)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    after = _result_files(study)
    assert set(after) == set(TRIALS)
    for tid, mtime in before.items():
        assert after[tid] == mtime, f"{tid} finished before the kill but was written again"
    from tests.ablation import fakes

    calls = fakes.read_calls(tmp_path / "calls.log")
    for tid in before:
        if tid != "base":
            assert [c for c in calls if c[0] == tid and c[3] == "OK"].__len__() == 1
            assert not [c for c in calls if c[0] == tid and c[1] > killed_at], f"{tid} ran again"
    for tid in set(TRIALS) - {"base"}:
        assert any(c[0] == tid and c[3] == "OK" for c in calls)
    parent = (study / "mlflow_run_id").read_text().strip()
    kids = mlflow_children(d["tracking_uri"], parent)
    assert sorted(k.info.run_name for k in kids) == sorted(TRIALS)
    assert {k.info.status for k in kids} == {"FINISHED"}
    assert json.loads((study / "report" / "results.json").read_text())["trials"] == ["A-t0", "D-c123-t0"]
    assert not _pids_mentioning(ray_tmp)
