"""A damaged model directory (config.json, weights, tokenizer) is one line naming the file, never a traceback."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from coloc_ray.errors import UserError
from coloc_ray.models import load_model, resolve_model_dir
from tests.conftest import run_cli

CASES = {
    "config_truncated": ("config.json", lambda b: b[: len(b) // 2], "cannot read its config"),
    "config_random": ("config.json", lambda b: os.urandom(200), "cannot read its config"),
    "config_not_object": ("config.json", lambda b: b"[1, 2]", "cannot read its config"),
    "config_no_model_type": ("config.json", lambda b: json.dumps(
        {k: v for k, v in json.loads(b).items() if k != "model_type"}).encode(), "cannot read its config"),
    "config_unsupported_family": ("config.json", lambda b: json.dumps({**json.loads(b), "model_type": "gpt2"}).encode(),
                                  "does not support"),
    "weights_truncated": ("model.safetensors", lambda b: b[: len(b) // 2], "cannot load its weights"),
    "weights_random": ("model.safetensors", lambda b: os.urandom(len(b)), "cannot load its weights"),
    "tokenizer_truncated": ("tokenizer.json", lambda b: b[: len(b) // 2], "cannot load its tokenizer"),
}


@pytest.fixture(scope="module")
def tiny_dir():
    return resolve_model_dir("tiny-gqa")[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_model_dir_is_one_line(case, tiny_dir, tmp_path):
    name, damage, msg = CASES[case]
    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    (d / name).write_bytes(damage((d / name).read_bytes()))
    with pytest.raises(UserError, match=msg) as e:
        load_model(str(d))
    assert "\n" not in str(e.value)


def test_cli_probe_with_corrupt_config_exits_2(tiny_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    (d / "config.json").write_bytes(b"\xff\xfe{")
    out = tmp_path / "out"
    r = run_cli("probe", "sensitivity", "--model", str(d), "--num-workers", "0", "--no-tracking", "--out", str(out),
                timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("coloc: error:")] and not out.exists()


def test_hub_id_in_the_local_cache_is_checked_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from coloc_ray.models.loading import check_model_spec

    snap = tmp_path / "models--acme--tiny" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "models--acme--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="model_type 'gpt2'"):
        check_model_spec("acme/tiny")
    check_model_spec("acme/not-cached")  # not checkable offline: left to the load
    (snap / "config.json").write_text(json.dumps({"model_type": "llama"}))
    check_model_spec("acme/tiny")
