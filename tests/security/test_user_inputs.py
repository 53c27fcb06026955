"""Inputs that used to hang, fail late or end in a traceback: each is refused up front with one line."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from coloc_ray.ablation.study_config import MAX_SEEDS, _dupes, load_study, validate_study
from tests.conftest import REPO, run_cli

TINY = REPO / "studies" / "tiny_test.yaml"


def _study(tmp_path, old: str, new: str):
    text = TINY.read_text()
    assert old in text
    p = tmp_path / "s.yaml"
    p.write_text(text.replace(old, new))
    return load_study(p)


@pytest.mark.parametrize("count", [MAX_SEEDS + 1, 1_000_000, 10**12])
def test_huge_seed_count_is_refused_at_once(tmp_path, count):
    cfg = _study(tmp_path, "control_seeds: [123, 124]", f"control_seeds: {count}")
    t = time.perf_counter()
    errs = validate_study(cfg)
    assert time.perf_counter() - t < 10  # was: never returned (O(n^2) over an unbounded list)
    assert any(e.startswith(f"control_seeds: {count} seeds, more than {MAX_SEEDS}") for e in errs), errs


def test_duplicate_check_is_linear_and_matches_the_naive_one(tmp_path):
    import random

    rng = random.Random(0)
    small = [rng.randrange(50) for _ in range(80)]
    assert _dupes(small) == sorted({x for x in small if small.count(x) > 1})  # the old definition
    seeds = list(range(MAX_SEEDS - 1)) + [7]
    cfg = _study(tmp_path, "control_seeds: [123, 124]", f"control_seeds: {seeds}")
    t = time.perf_counter()
    errs = validate_study(cfg)
    assert time.perf_counter() - t < 10
    assert any("duplicate seeds [7]" in e for e in errs), errs


def test_fsdp_with_one_worker_is_refused_and_two_pass(tmp_path):
    one = _study(tmp_path, "  data: {max_records: 24}", "  data: {max_records: 24}\n  extra: {strategy: fsdp}")
    assert any("strategy 'fsdp' with resources.workers_per_trial = 1" in e for e in validate_study(one))
    two = _study(tmp_path, "  data: {max_records: 24}\n", "  data: {max_records: 24}\n  extra: {strategy: fsdp}\n")
    two = two.model_copy(update={"resources": two.resources.model_copy(update={"workers_per_trial": 2})})
    assert not [e for e in validate_study(two) if "strategy" in e]


@pytest.fixture()
def model_copy_dir(tmp_path):
    from coloc_ray.models import resolve_model_dir

    d = tmp_path / "model"
    shutil.copytree(resolve_model_dir("tiny-gqa")[0], d)
    return d


def test_unsupported_family_and_corrupt_config_found_at_validate(tmp_path, model_copy_dir):
    cfg_file = model_copy_dir / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "model_type": "gpt2"}))
    study = _study(tmp_path, "model: tiny-gqa", f"model: {model_copy_dir}")
    assert any("model_type 'gpt2', which coloc-ray does not support" in e for e in validate_study(study))
    cfg_file.write_bytes(b'{"model_type": "lla')
    errs = validate_study(study)
    assert any("config.json" in e and "is corrupt" in e for e in errs), errs


def _one_error_line(r) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("coloc: error:"), r.stderr
    return lines[0]


def test_cli_inputs_are_one_line(tmp_path):
    bad_yaml = tmp_path / "latin1.yaml"
    bad_yaml.write_bytes(TINY.read_bytes().replace(b"name: tiny_test", b"name: tiny_test # caf\xe9"))
    assert "not UTF-8" in _one_error_line(run_cli("validate", str(bad_yaml)))
    assert "not UTF-8" in _one_error_line(run_cli("run", str(bad_yaml)))
    assert "not UTF-8" in _one_error_line(run_cli("finetune", "--config", str(bad_yaml), "--out", str(tmp_path / "o")))
    sd = tmp_path / "study"
    sd.mkdir()
    (sd / "study.json").write_text('{"name": "x", "mod')
    assert "study.json is corrupt" in _one_error_line(run_cli("resume", str(sd)))
    (sd / "study.json").write_text('{"name": "x"}')
    assert "model: Field required" in _one_error_line(run_cli("resume", str(sd)))
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is a file" in _one_error_line(run_cli("finetune", "--model", "tiny-gqa", "--lora-layers", "1",
                                                  "--garfa-layers", "", "--no-tracking", "--out", str(afile)))
    assert "is a file" in _one_error_line(run_cli("run", str(TINY), "--out", str(afile)))
    assert "cannot write in '/proc'" in _one_error_line(run_cli("eval", "--model", "tiny-gqa", "--benchmarks",
                                                                "arc_challenge", "--no-tracking", "--out", "/proc/x"))


def test_out_on_a_read_only_mount_is_refused_before_work(tmp_path):
    import os
    import subprocess

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root to make a read-only bind mount in a private mount namespace")
    ro = tmp_path / "ro"
    ro.mkdir()
    # a private mount namespace: the read-only bind mount is seen by this command only
    cmd = (f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && "
           f"{REPO / '.venv' / 'bin' / 'coloc'} probe sensitivity --model tiny-gqa --num-workers 0 --no-tracking "
           f"--out {ro / 'out'}")
    exe = shutil.which("coloc") or str(REPO / ".venv" / "bin" / "coloc")
    cmd = cmd.replace(str(REPO / ".venv" / "bin" / "coloc"), exe)
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", cmd], capture_output=True,
                       text=True, timeout=300)
    assert "cannot write in" in _one_error_line(r)


@pytest.mark.slow
def test_eval_says_when_it_replaces_an_earlier_output(tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "eval.json").write_text('{"old": true}')
    r = run_cli("eval", "--model", "tiny-gqa", "--benchmarks", "arc_challenge", "--limit", "1", "--no-tracking",
                "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"replaced the earlier evaluation in {out}" in r.stderr
    assert "old" not in json.loads((out / "eval.json").read_text())
