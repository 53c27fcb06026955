"""The vLLM-engine side of ``coloc eval`` that needs no vLLM: the lm-eval adapter against lm-eval's own HFLM,
precision matching, the GARFA-file check, and a dead engine process reported with its log.

The adapter test drives ``make_engine_lm`` with a reference engine that answers the engine's requests with
plain one-sequence HF computations (greedy ``generate``, a log-softmax sum): HFLM on the same model is the
independent reference, so any difference is the adapter's tokenization, truncation or stop handling.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from coloc_ray.errors import UserError


class HFEngine:
    """Answers ``Engine.call`` requests with the HF model itself (no batching, no padding)."""

    def __init__(self, model, tok):
        self.model, self.tok, self.calls = model, tok, []

    def call(self, op, **req):
        self.calls.append(op)
        with torch.no_grad():
            if op == "generate":
                out = []
                for ids in req["prompts"]:
                    x = torch.tensor([ids])
                    g = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=req["max_tokens"],
                                            do_sample=False, stop_strings=req["stop"] or None, tokenizer=self.tok,
                                            pad_token_id=self.tok.pad_token_id)
                    out.append(g[0, len(ids):].tolist())
                return {"token_ids": out}
            res = []
            for ctx, cont in req["pairs"]:
                x = torch.tensor([ctx + cont])
                lp = self.model(x).logits[0, len(ctx) - 1:-1].float().log_softmax(-1)
                tgt = torch.tensor(cont)
                res.append([float(lp.gather(-1, tgt[:, None]).sum()), bool((lp.argmax(-1) == tgt).all())])
            return {"results": res}


@pytest.fixture(scope="module")
def tiny():
    from coloc_ray.models import load_model

    return load_model("tiny-gqa")


@pytest.mark.parametrize("bench", ["gpqa", "mgsm"])
def test_engine_lm_equals_hflm_item_by_item(tiny, tmp_path, bench):
    from coloc_ray.evaluation import harness
    from coloc_ray.evaluation.offline import load_items, render_tasks
    from coloc_ray.evaluation.registry import BENCHMARKS

    b = BENCHMARKS[bench]
    items, shots = load_items(b, 3, 0)
    tasks = render_tasks(b, items, shots, tmp_path / bench, max_gen_toks=12)
    engine, counted = HFEngine(tiny.model, tiny.tokenizer), []
    ref = harness.samples_to_items(harness.run_tasks(harness.make_lm(tiny.model, tiny.tokenizer, 1), tasks,
                                                     include_dir=tmp_path / bench, num_fewshot=None, limit=None,
                                                     seed=0), b)
    got = harness.samples_to_items(harness.run_tasks(harness.make_engine_lm(engine, tiny.tokenizer, 4096, counted),
                                                     tasks, include_dir=tmp_path / bench, num_fewshot=None,
                                                     limit=None, seed=0), b)
    assert [r["id"] for r in got] == [r["id"] for r in ref] and len(ref) >= 3
    for g, r in zip(got, ref):
        assert g["prompt_hash"] == r["prompt_hash"] and g["prediction"] == r["prediction"], g["id"]
        assert g["correct"] == r["correct"]
        if "loglikelihoods" in r:
            assert g["loglikelihoods"] == pytest.approx(r["loglikelihoods"], abs=1e-4)
        else:
            assert g["generation"] == r["generation"]
    assert set(engine.calls) == {"loglikelihood" if bench == "gpqa" else "generate"}
    assert (len(counted) == len(ref) and all(0 < n <= 12 for n in counted)) if bench == "mgsm" else not counted


def test_generate_on_engine_left_truncates_like_hflm(tiny):
    from coloc_ray.evaluation.harness import generate_on_engine

    seen, hi = {}, tiny.tokenizer("hi", add_special_tokens=False)["input_ids"]

    class Recorder:
        def call(self, op, **req):
            seen.update(req)
            return {"token_ids": [hi for _ in req["prompts"]]}

    long = "x" * 50 + "END"
    texts = generate_on_engine(Recorder(), tiny.tokenizer, [long, "ab"], 8, ["\n"], 16)
    want = tiny.tokenizer(long, add_special_tokens=False)["input_ids"][-8:]
    assert seen["prompts"][0] == want and seen["prompts"][1] == tiny.tokenizer("ab")["input_ids"]
    assert seen["max_tokens"] == 8 and seen["stop"] == ["\n"] and texts == ["hi", "hi"]


def _adapter(tmp_path: Path, quant: str | None) -> str:
    d = tmp_path / f"ad_{quant}"
    d.mkdir()
    if quant:
        (d / "metrics.json").write_text(json.dumps({"quant": quant}))
    return str(d)


def test_precision_matches_training_or_says_why(tmp_path):
    from coloc_ray.evaluation.precision import resolve_precision

    q4, full = _adapter(tmp_path, "4bit"), _adapter(tmp_path, "none")
    cpu = resolve_precision("match", q4, "vllm", cuda=False)
    assert cpu["trained"] == cpu["wanted"] == "4bit" and cpu["hf_quant"] == "4bit"  # bitsandbytes is in .venv
    assert cpu["engine"] == {"dtype": "bfloat16", "quantization": None} and cpu["matched"] is False
    assert "vLLM-CPU has no bitsandbytes" in cpu["note"]
    gpu = resolve_precision("match", q4, "vllm", cuda=True)
    assert gpu["engine"]["quantization"] == "bitsandbytes" and gpu["matched"] and gpu["note"] is None
    assert resolve_precision("match", q4, "hf", cuda=False)["matched"]  # HF loads NF4 on CPU too
    forced = resolve_precision("none", q4, "hf", cuda=False)
    assert not forced["matched"] and "trained on a 4bit base, evaluated as none" in forced["note"]
    for adapter in (full, None, _adapter(tmp_path, None)):
        r = resolve_precision("match", adapter, "vllm", cuda=False)
        assert r["wanted"] == "none" and r["engine"]["dtype"] == "float32" and r["matched"]


def test_garfa_file_checked_against_model_shape(tmp_path):
    from coloc_ray.evaluation.engine import check_garfa_file
    from coloc_ray.models import resolve_model_dir
    from tests.vllm.conftest import write_garfa

    model_dir = resolve_model_dir("tiny-gqa")[0]  # 4 layers, 2 KV heads, head_dim 16
    ok = write_garfa(tmp_path / "ok", [0, 3], torch.tensor([[0.5, -0.5], [1.0, 0.0]]), 4, 16)
    assert check_garfa_file(model_dir, str(ok))["layers"] == [0, 3]
    assert check_garfa_file(model_dir, str(tmp_path)) is None
    heads = write_garfa(tmp_path / "heads", [0], torch.zeros(1, 3), 4, 16)
    with pytest.raises(UserError, match="num_kv_heads=3 but the model .* has num_kv_heads=2"):
        check_garfa_file(model_dir, str(heads))
    deep = write_garfa(tmp_path / "deep", [0], torch.zeros(1, 2), 30, 16)
    with pytest.raises(UserError, match="num_layers=30"):
        check_garfa_file(model_dir, str(deep))
    beyond = write_garfa(tmp_path / "beyond", [7], torch.zeros(1, 2), 4, 16)
    with pytest.raises(UserError, match=r"layers \[7\]"):
        check_garfa_file(model_dir, str(beyond))


def test_dead_engine_process_is_reported_with_its_log(tmp_path, monkeypatch):
    from coloc_ray.evaluation import engine as eng

    if eng.importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm importable here: the engine would really start")
    monkeypatch.setenv("COLOC_VLLM_PYTHON", sys.executable)  # a python without vLLM as the "vllm venv"
    e = eng.Engine({"model_dir": str(tmp_path), "adapter_dir": None}).start()
    try:
        with pytest.raises(RuntimeError, match="No module named 'vllm'"):
            e.ready()
    finally:
        e.close()
    monkeypatch.setenv("COLOC_VLLM_PYTHON", str(tmp_path / "none" / "python"))
    with pytest.raises(UserError, match="setup.sh vllm"):
        eng.Engine({}).start()
