"""``backend: auto`` picks the vLLM engine exactly when one can run (its venv found or vllm importable)."""

from __future__ import annotations

import importlib.util

import pytest

from coloc_ray.evaluation.config import EvalConfig


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm importable in the main venv")
def test_auto_follows_the_vllm_venv(tmp_path, monkeypatch):
    py = tmp_path / "venv" / "bin" / "python"
    monkeypatch.setenv("COLOC_VLLM_PYTHON", str(py))
    assert EvalConfig(model="tiny-gqa", backend="auto").backend == "hf"  # no venv there
    py.parent.mkdir(parents=True)
    py.write_text("")
    assert EvalConfig(model="tiny-gqa", backend="auto").backend == "vllm"
    assert EvalConfig(model="tiny-gqa").backend == "hf"  # the default stays HF
