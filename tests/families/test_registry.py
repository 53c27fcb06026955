"""The family registry: each tiny alias loads with its family's shape facts, every shipped study file's family
is supported, and `coloc validate` names a family it cannot handle before any work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from coloc_ray.models import load_model, resolve_model_dir
from coloc_ray.models.families import FAMILIES
from tests.conftest import REPO, run_cli
from tests.families.conftest import NEW_FAMILIES


@pytest.mark.parametrize("alias", list(NEW_FAMILIES))
def test_tiny_alias_loads_as_its_family(alias):
    lm = load_model(alias, device="cpu")
    info = lm.info
    assert info.model_type == NEW_FAMILIES[alias] and info.model_type in FAMILIES
    assert (info.num_layers, info.num_heads, info.num_kv_heads, info.head_dim) == (4, 4, 2, 16)
    assert lm.tokenizer.chat_template  # the chat / assistant-mask code paths run on it


def test_gemma3_model_info_reports_the_global_base():
    info = load_model("tiny-gemma3", device="cpu").info
    assert (info.rope_theta, info.rope_type) == (1_000_000.0, "linear")


def test_quirks_are_switched_on():
    cfg = {a: load_model(a, device="cpu").model.config for a in NEW_FAMILIES}
    assert cfg["tiny-gemma2"].attn_logit_softcapping and cfg["tiny-gemma2"].final_logit_softcapping
    for a in ("tiny-gemma2", "tiny-gemma3"):
        assert cfg[a].layer_types[:2] == ["sliding_attention", "full_attention"] and cfg[a].sliding_window == 6
        assert cfg[a].query_pre_attn_scalar != cfg[a].head_dim
    assert cfg["tiny-phi3"].rope_parameters["partial_rotary_factor"] == 0.75
    assert cfg["tiny-qwen3-moe"].num_experts == 4 and not cfg["tiny-qwen3-moe"].mlp_only_layers
    qn = load_model("tiny-qwen3", device="cpu").model.model.layers[0].self_attn.q_norm.weight
    assert not torch.equal(qn, torch.ones_like(qn))  # norm weights drawn away from their init


def test_gemma2_final_logits_are_soft_capped():
    from coloc_ray.models.introspect import final_logits

    model = load_model("tiny-gemma2", device="cpu").model
    ids = torch.randint(0, 250, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        last = model.model.layers[-1]
        seen = {}
        h = last.register_forward_hook(lambda m, a, o: seen.setdefault("h", o[0] if isinstance(o, tuple) else o))
        model(ids)
        h.remove()
        got = final_logits(model, seen["h"])
    torch.testing.assert_close(got, out.logits, rtol=0, atol=1e-6)
    assert out.logits.abs().max() < model.config.final_logit_softcapping


@pytest.mark.parametrize("path", sorted(REPO.glob("jobs/*.yaml")), ids=lambda p: p.name)
def test_shipped_study_models_are_of_a_supported_family(path):
    """The jobs/ hub ids are checked by name (their config.json needs the hub): each names a known checkpoint."""
    model = yaml.safe_load(path.read_text())["model"]
    known = {"meta-llama/Llama-3.1-8B-Instruct": "llama", "meta-llama/Llama-3.1-70B-Instruct": "llama",
             "Qwen/Qwen2.5-7B-Instruct": "qwen2", "Qwen/Qwen3-8B": "qwen3", "google/gemma-2-9b-it": "gemma2",
             "google/gemma-3-1b-it": "gemma3_text", "microsoft/Phi-4-mini-instruct": "phi3",
             "Qwen/Qwen3-30B-A3B": "qwen3_moe"}
    assert known[model] in FAMILIES


@pytest.mark.parametrize("mtype,named", [("gemma3", "multimodal Gemma 3"), ("gpt_neox", "gpt_neox")])
def test_validate_names_an_unsupported_family_before_any_work(tmp_path, mtype, named):
    d = tmp_path / "m"
    shutil.copytree(resolve_model_dir("tiny-gqa")[0], d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": mtype}))
    study = yaml.safe_load((REPO / "studies" / "tiny_test.yaml").read_text())
    study["model"] = str(d)
    study["output_dir"] = str(tmp_path / "out")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    r = run_cli("validate", str(tmp_path / "s.yaml"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"model_type {mtype!r}" in r.stderr and named in r.stderr and "qwen3_moe" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
