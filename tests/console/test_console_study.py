"""A tiny study through the CLI (fake stages as noisy as the real ones): a quiet console, and the noise in
each trial's log in the study storage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.console.test_console import BAR


def _run_cli(tmp: Path, verbose: bool) -> tuple[str, Path, Path]:
    import yaml

    from tests.ablation.conftest import fake_env, tiny_study_dict

    d = tiny_study_dict(tmp, arms=["A"], control_seeds=[123])
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    env = {**os.environ, **fake_env(tmp, sleep=0.5), "PYTHONPATH": str(REPO), "COLOC_SCRATCH": str(tmp / "scratch")}
    argv = [sys.executable, "-m", "tests.console.noisy", "run", str(path)]  # coloc on the noisy fake stages
    argv += ["-v"] if verbose else []
    p = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, timeout=540, env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    return out, Path(d["output_dir"]), tmp / "scratch"


def _trial_log(study_dir: Path, tid: str) -> str:
    """A trial's log as kept in the study storage: ``logs/trials/<id>/<host>-<pid>.log``, one per process."""
    logs = sorted((study_dir / "logs" / "trials" / tid).glob("*.log"))
    assert logs, f"no log for trial {tid} under {study_dir / 'logs'}"
    return "".join(p.read_text() for p in logs)


@pytest.mark.ray
@pytest.mark.slow
def test_tiny_study_console_is_quiet_and_trial_logs_hold_the_noise(ray_token_env, tmp_path):
    from tests.console.noisy import ACTIONABLE

    out, study_dir, _ = _run_cli(tmp_path, verbose=False)
    assert "Traceback" not in out and not BAR.search(out), out
    for noise in ("gemm_4bit_forward", "not a git repository", "plain chatter"):
        assert noise not in out, noise
    assert out.count(ACTIONABLE) == 1, out     # shown once, though every trial raised it
    assert "trial_id" in out and "study tiny_test: 2 trials done" in out
    for tid in ("base", "A-t0"):
        log = _trial_log(study_dir, tid)
        for want in ("items: 100%|", "gemm_4bit_forward", "not a git repository", "Traceback", ACTIONABLE):
            assert want in log, (tid, want)
    assert "probes: running" in (study_dir / "logs" / "driver.log").read_text()  # the driver's own log
    assert (study_dir / "logs" / "ray-workers.log").is_file()                    # what Ray forwarded
