"""``coloc eval --backend vllm`` against ``--backend hf`` on SmolLM2 with a LoRA + GARFA adapter, item by item.

One evaluation each way on MATH, MGSM, HumanEval+ (generation on the one engine) and GPQA (log-likelihood on
the engine too): greedy generations must be identical and the log-likelihood choices the same. The engine's
adapter check must pass (and report the engine nearer the adapted HF model than the base), and an adapter
whose LoRA is a no-op (B = 0) must be refused by the engine check before any scoring.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from coloc_ray.errors import UserError

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(3600)]

BENCHES = "math,mgsm,humanevalplus,gpqa"
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _adapter(out: Path, b_scale: float, rho_scale: float = 0.3) -> Path:
    """LoRA r 16 on layers 3, 7, 20 (B ~ b_scale * N(0, 1)) + GARFA on layers 0, 1, 2, 5, 12 (rho ~ rho_scale *
    N(0, 1)), saved as a fine-tune.

    The scales are those of a fine-tune that moved the model, not of noise: with B ~ 0.02 N and rho ~ 1.5 N (alpha
    from 0.05 to 20) SmolLM2's greedy text was degenerate, its next-token distributions flat, and fp32 round-off
    between the engine and HF flipped near-ties (MGSM te/149 at the first token, HumanEval/98 and /107 in one CI
    run): a comparison of two forward passes cannot be made on ties."""
    from peft import LoraConfig, get_peft_model

    from coloc_ray.finetune.adapter import save_adapter
    from coloc_ray.garfa import apply_garfa
    from coloc_ray.models import load_model

    lm = load_model("smollm2-135m")
    peft = get_peft_model(lm.model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=PROJ,
                                               layers_to_transform=[3, 7, 20], layers_pattern="layers"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * b_scale)
    scalers = apply_garfa(peft, [0, 1, 2, 5, 12])
    with torch.no_grad():
        scalers.rho.copy_(torch.randn(scalers.rho.shape, generator=g) * rho_scale)
    save_adapter(peft, scalers, lm.info, out)
    (out / "metrics.json").write_text(json.dumps({"quant": "none"}))
    return out


@pytest.fixture(scope="module")
def work(vllm_py):
    d = Path(tempfile.mkdtemp(prefix="coloc-eval-engine-"))  # not tmp_path: see test_vllm_generate.py
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the engine's processes share the 2 cores with the HF path
    try:
        yield d
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def both(work):
    from coloc_ray.evaluation.api import run_eval
    from coloc_ray.evaluation.config import EvalConfig

    adapter = _adapter(work / "adapter", 0.005)
    outs = {}
    for backend in ("vllm", "hf"):
        cfg = EvalConfig(model="smollm2-135m", adapter=str(adapter), benchmarks=BENCHES, limit=3, backend=backend,
                         loglik_backend="vllm", max_new_tokens=48, batch_size=1, tracking=False, n_bootstrap=100)
        run_eval(cfg, work / backend)
        outs[backend] = work / backend
    return outs


def _items(out: Path, bench: str) -> list[dict]:
    return [json.loads(x) for x in (out / "items" / f"{bench}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("bench", ["math", "mgsm", "humanevalplus"])
def test_generations_equal_item_by_item(both, bench):
    """Same prompts token for token; greedy texts equal, except where the random adapter's degenerate output hits
    a near-tie: one run saw MGSM te/149 agree on "4\nప్" and then diverge in Telugu noise (fp32 vLLM vs HF
    round-off). So at most one item of the three may differ, and only after a common start."""
    hf, vl = _items(both["hf"], bench), _items(both["vllm"], bench)
    assert [r["id"] for r in vl] == [r["id"] for r in hf] and len(hf) >= 3
    differ = []
    for h, v in zip(hf, vl):
        assert v["prompt_hash"] == h["prompt_hash"]
        if v["generation"] != h["generation"]:
            differ.append(h["id"])
            assert v["generation"][:2] == h["generation"][:2], h["id"]
        else:
            assert v["correct"] == h["correct"]
    assert len(differ) <= 1, differ


def test_loglikelihood_on_engine_equals_hf(both):
    hf, vl = _items(both["hf"], "gpqa"), _items(both["vllm"], "gpqa")
    for h, v in zip(hf, vl):
        assert v["prediction"] == h["prediction"]
        assert v["loglikelihoods"] == pytest.approx(h["loglikelihoods"], abs=2e-3)


def test_run_record_says_what_ran_and_the_adapter_applied(both):
    ev = json.loads((both["vllm"] / "eval.json").read_text())
    run = json.loads((both["vllm"] / "eval_config.json").read_text())["run"]
    assert {b: r["backend"] for b, r in ev.items()} == {b: "vllm" for b in BENCHES.split(",")}
    assert all(ev[b]["new_tokens"] > 0 for b in ("math", "mgsm", "humanevalplus")) and ev["gpqa"]["new_tokens"] == 0
    g = run["engine_guard"]
    assert g["engine_lora_max_abs_logprob_diff"] > 1e-3
    assert g["engine_vs_hf_adapted"] < g["engine_vs_hf_base"]
    assert run["engine"]["engine_args"]["max_lora_rank"] == 16 and run["engine"]["engine_args"]["enable_lora"]
    assert run["engine"]["engine_args"]["hf_overrides"]["architectures"] == ["GarfaLlamaForCausalLM"]
    assert run["precision"]["matched"] and run["engine"]["engine_args"]["dtype"] == "float32"
    assert run["engine"]["versions"]["vllm"] and run["wall_s"] > 0 and run["new_tokens"] > 0
    hf_run = json.loads((both["hf"] / "eval_config.json").read_text())["run"]
    assert hf_run["backend"] == "hf" and hf_run["engine"] is None


def test_engine_refuses_a_no_op_lora(work):
    from coloc_ray.evaluation.engine import Engine, check_engine_adapter
    from coloc_ray.models import load_model, resolve_model_dir

    zero = _adapter(work / "zero", 0.0)
    tok = load_model("smollm2-135m").tokenizer
    spec = {"model_dir": resolve_model_dir("smollm2-135m")[0], "adapter_dir": str(zero), "dtype": "float32",
            "max_model_len": 512}
    with Engine(spec) as engine:
        with pytest.raises(UserError, match="did not apply"):
            check_engine_adapter(engine, tok)
