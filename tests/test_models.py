"""Model resolution and introspection (the foundation every stage builds on)."""

from pathlib import Path

import pytest
import torch

from coloc_ray.errors import UserError
from coloc_ray.models import base_inv_freq, decoder_layers, load_model, model_info, resolve_model_dir
from tests.conftest import run_cli


@pytest.mark.parametrize("alias,mt", [("tiny-gqa", "llama"), ("tiny-qwen2", "qwen2"), ("tiny-mistral", "mistral")])
def test_tiny_families_load_with_gqa_shape(alias, mt):
    lm = load_model(alias)
    assert lm.info.model_type == mt
    assert (lm.info.num_layers, lm.info.num_heads, lm.info.num_kv_heads, lm.info.head_dim) == (4, 4, 2, 16)
    assert len(decoder_layers(lm.model)) == 4
    # inv_freq as the model computes it: theta ** (-2i/d)
    d = lm.info.head_dim
    ref = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    torch.testing.assert_close(base_inv_freq(lm.model).double(), ref, rtol=1e-6, atol=0)


def test_tiny_is_deterministic_across_builds(tmp_path, monkeypatch):
    """Two builds from scratch, each into its own empty cache ($COLOC_CACHE), give bit-identical weights (one
    cache would have made both loads read the same file)."""
    states = []
    for cache in ("a", "b"):
        monkeypatch.setenv("COLOC_CACHE", str(tmp_path / cache))
        lm = load_model("tiny-gqa")
        assert Path(lm.path) == tmp_path / cache / "models" / "tiny-gqa"  # built here, not read from elsewhere
        states.append(lm.model.state_dict())
    a, b = states
    assert list(a) == list(b) and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_mha_warns():
    with pytest.warns(UserWarning, match="multi-head attention"):
        load_model("tiny-mha")


def test_unknown_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a built-in alias"):
        resolve_model_dir("no-such-model")
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve_model_dir(str(tmp_path / "x"))
    with pytest.raises(UserError, match="no such GGUF"):
        resolve_model_dir(str(tmp_path / "missing.gguf"))


def test_model_without_rope_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UserError, match="gpt2.*does not support"):
        model_info(m)


def test_cli_error_is_one_line_exit_2():
    r = run_cli("models", "info", "no-such-model")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("coloc: error:")
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_smollm2_shape(smollm2):
    i = smollm2.info
    assert (i.num_layers, i.num_heads, i.num_kv_heads, i.head_dim, i.rope_theta) == (30, 9, 3, 64, 100000.0)
    assert (i.model_type, i.vocab_size) == ("llama", 49152)


def test_gemma2_loads_with_the_attention_soft_cap_applied():
    """HF's sdpa drops Gemma 2's attention-score soft-cap; load_model switches such a model to eager so probes and
    fine-tunes see the model as it is (vLLM applies the cap too). The capped and uncapped logits differ."""
    import torch
    from transformers import AutoModelForCausalLM

    from coloc_ray.models import load_model

    lm = load_model("tiny-gemma2")
    assert lm.model.config._attn_implementation == "eager" and lm.model.config.attn_logit_softcapping
    sdpa = AutoModelForCausalLM.from_pretrained(lm.path, dtype=torch.float32, attn_implementation="sdpa").eval()
    ids = lm.tokenizer("the cap matters here", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for m in (lm.model, sdpa):  # same sharper queries in both: scores large enough for the cap to bite
            for layer in m.model.layers:
                layer.self_attn.q_proj.weight.mul_(30.0)
        capped, uncapped = lm.model(ids).logits, sdpa(ids).logits
    assert (capped - uncapped).abs().max() > 1e-3
    assert load_model("tiny-gqa").model.config._attn_implementation == "sdpa"  # others keep the fast path
