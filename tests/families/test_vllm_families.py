"""vLLM (CPU) + the GARFA plugin equals the HF path per family (prompt log-probabilities, fp32).

The models are each family's tiny config at head_dim 32 (vLLM's CPU attention needs >= 32), quirks on, q/k
sharpened and the head scaled so log-probabilities spread; GARFA on a sliding and a global layer with nonzero rho.
The HF side is coloc_ray.garfa, itself checked against the independent raw-weight reference
(test_garfa_families.py). A family vLLM cannot run here is listed in VLLM_UNSUPPORTED with the reason; any other
failure, an ImportError included, fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from tests.families.conftest import NEW_FAMILIES, sharpen
from tests.vllm.conftest import REPO, vllm_py  # noqa: F401 - the fixture (skips without the vllm venv)

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(2400)]

# family -> why vLLM (CPU, 0.32) cannot serve it here; the test then checks that it says so. None today.
VLLM_UNSUPPORTED: dict[str, str] = {}
LAYERS = [0, 1]  # Gemma: sliding (0) and global (1)


def _save_family(alias: str, out):
    from coloc_ray.garfa import save_garfa
    from coloc_ray.garfa.core import GarfaScalers
    from coloc_ray.models.introspect import model_info
    from coloc_ray.models.tiny import build_tiny

    model, tok = build_tiny(alias, hidden_size=128, head_dim=32)
    model.set_attn_implementation("eager")  # HF's sdpa drops Gemma 2's score soft-cap; vLLM applies it
    sharpen(model, 3.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(out / "model", safe_serialization=True)
    tok.save_pretrained(out / "model")
    scalers = GarfaScalers(LAYERS, model.config.num_key_value_heads, 32)
    with torch.no_grad():
        scalers.rho.copy_(torch.tensor([[1.2, -1.0], [-0.8, 1.4]]))
    save_garfa(scalers, out / "garfa", model_info(model, name=alias))
    return model


@pytest.fixture(scope="module")
def results(vllm_py, tmp_path_factory):  # noqa: F811 - pytest injects the fixture imported above
    from coloc_ray.garfa import load_garfa

    root = tmp_path_factory.mktemp("families-vllm")
    ids = torch.randint(0, 250, (24,), generator=torch.Generator().manual_seed(7)).tolist()
    jobs, hf = [], {}
    for alias, family in NEW_FAMILIES.items():
        model = _save_family(alias, root / family)
        x = torch.tensor([ids])
        with torch.no_grad():
            base = torch.log_softmax(model(x).logits[0].double(), -1)
            load_garfa(model, root / family / "garfa")
            garfa = torch.log_softmax(model(x).logits[0].double(), -1)
        pick = lambda lp: [None] + [lp[t - 1, ids[t]].item() for t in range(1, len(ids))]  # noqa: E731
        hf[family] = {"base": pick(base), "garfa": pick(garfa)}
        jobs.append({"family": family, "model_dir": str(root / family / "model"),
                     "garfa_dir": str(root / family / "garfa"), "prompt_ids": ids})
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLOC_FAMILY_JOBS": str(root / "jobs.json")}
    proc = subprocess.run([str(vllm_py), str(REPO / "tests/families/vllm_check.py")], capture_output=True,
                          text=True, env=env, timeout=2200)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return hf, json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("family", list(NEW_FAMILIES.values()))
def test_vllm_plugin_equals_hf_garfa(results, family):
    hf, vl = results
    got = vl[family]
    if family in VLLM_UNSUPPORTED:
        assert "error" in got and VLLM_UNSUPPORTED[family] in got["error"], got
        pytest.skip(f"vLLM CPU cannot serve {family}: {VLLM_UNSUPPORTED[family]}")
    assert "error" not in got, got
    want, base = hf[family]["garfa"], hf[family]["base"]
    diff = max(abs(a - b) for a, b in zip(got["logprobs"][1:], want[1:]))
    moved = max(abs(a - b) for a, b in zip(base[1:], want[1:]))
    assert moved > 0.05, moved  # GARFA really changes the scores
    assert diff < 1e-3 * max(1.0, moved), (diff, moved)
