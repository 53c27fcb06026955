"""The GARFA vLLM plugin end to end on SmolLM2: vLLM greedy token ids against HF references.

Three engines in one vllm-venv subprocess (started first, in a thread, so the HF references are computed while
vLLM loads): base (+ the LoRA adapter), GARFA with rho = 0, GARFA with nonzero rho (+ the LoRA adapter).
Each LoRA-enabled engine generates with and without its adapter, so four configurations cost three engine starts.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from tests.vllm.conftest import hf_greedy, raw_garfa, write_garfa

# Engine starts dominate; on a loaded 2-core box each can take minutes, so more than the default 900 s.
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(2400)]

PROMPTS = ["def fibonacci(n):", "The capital of France is", "Water freezes at"]
N = 32
GARFA_LAYERS = [0, 1, 2, 5, 12]  # early layers: SmolLM2's RoPE influence is largest there
LORA_LAYERS = [3, 7, 20]


def _rho() -> torch.Tensor:
    return torch.randn(len(GARFA_LAYERS), 3, generator=torch.Generator().manual_seed(0)) * 1.5


def _make_lora(model, out):
    """A PEFT LoRA (7 projections, 3 layers, r 16) with small random B, so it changes the output a little."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, layers_to_transform=LORA_LAYERS, layers_pattern="layers",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    peft.save_pretrained(out)
    return peft.eval()


def _unpatch(model, layers):
    for idx in layers:
        model.model.layers[idx].self_attn.__dict__.pop("forward", None)


@pytest.fixture(scope="module")
def runs(vllm_py):
    # Not tmp_path_factory: concurrent pytest sessions on this machine prune old pytest-of-* dirs, and this
    # fixture's engines read the adapter dirs for minutes.
    d = Path(tempfile.mkdtemp(prefix="coloc-vllm-test-"))
    # One torch thread for the HF references: with vLLM's processes beside them on 2 cores, two OpenMP threads
    # spin-wait on each other and HF generation crawls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _runs(d)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(d, ignore_errors=True)


def _runs(d: Path):
    from peft import PeftModel

    from coloc_ray.evaluation.vllm_backend import run_jobs
    from coloc_ray.models import load_model, unwrap_model

    lm = load_model("smollm2-135m")  # own copies (reload from the safetensors cache is fast): PEFT mutates them
    L, G, hd = lm.info.num_layers, lm.info.num_kv_heads, lm.info.head_dim
    rho = _rho()
    alpha = torch.exp(torch.log(torch.tensor(4.0, dtype=torch.float64)) * torch.tanh(rho.double()))
    zero = write_garfa(d / "zero", GARFA_LAYERS, torch.zeros(len(GARFA_LAYERS), G), L, hd)
    _make_lora(lm.model, d / "lora")
    shutil.copytree(d / "lora", d / "lora_garfa")
    write_garfa(d / "lora_garfa", GARFA_LAYERS, rho, L, hd)

    base = {"model_dir": lm.path, "prompts": PROMPTS, "max_new_tokens": N, "dtype": "float32",
            "max_model_len": 256}
    jobs = [{**base, "adapter_dir": str(d / "lora"), "lora_passes": [False, True]},
            {**base, "adapter_dir": str(zero)},
            {**base, "adapter_dir": str(d / "lora_garfa"), "lora_passes": [False, True]}]
    box = {}
    thread = threading.Thread(target=lambda: box.update(res=_safe(run_jobs, jobs)))
    thread.start()  # vLLM loads in its own process while the HF references below are computed

    lm = load_model("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    hf = {"base": hf_greedy(model, tok, PROMPTS, N)}
    raw_garfa(model, GARFA_LAYERS, alpha)
    hf["garfa"] = hf_greedy(model, tok, PROMPTS, N, use_cache=False)
    _unpatch(model, GARFA_LAYERS)
    hf.update(_library_reference(model, tok, d / "lora_garfa"))
    peft = PeftModel.from_pretrained(model, str(d / "lora")).eval()  # the saved adapter, as vLLM reads it
    hf["lora"] = hf_greedy(peft, tok, PROMPTS, N)
    raw_garfa(unwrap_model(peft), GARFA_LAYERS, alpha)
    hf["lora_garfa"] = hf_greedy(peft, tok, PROMPTS, N, use_cache=False)
    thread.join()
    if isinstance(box["res"], BaseException):
        raise box["res"]
    r = box["res"]
    vl = {"base": r[0]["passes"][0], "lora": r[0]["passes"][1], "zero": r[1]["passes"][0],
          "garfa": r[2]["passes"][0], "lora_garfa": r[2]["passes"][1]}
    return hf, {k: v["token_ids"] for k, v in vl.items()}


def _safe(fn, *args):
    try:
        return fn(*args)
    except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
        return e


def _library_reference(model, tok, garfa_dir) -> dict:
    """coloc_ray.garfa's HF patch (with the KV cache). It is part of this package, so an ImportError here is a
    failure, never a skip: only a missing vllm venv skips these tests (the ``vllm_py`` fixture)."""
    from coloc_ray.garfa import load_garfa, remove_garfa

    load_garfa(model, garfa_dir)
    try:
        return {"garfa_lib": hf_greedy(model, tok, PROMPTS, N)}
    finally:
        remove_garfa(model)


def test_base_vllm_equals_hf(runs):
    hf, vl = runs
    assert vl["base"] == hf["base"]


def test_rho_zero_equals_base_vllm(runs):
    hf, vl = runs
    assert vl["zero"] == vl["base"]


def test_garfa_equals_hf_reference_and_differs_from_base(runs):
    hf, vl = runs
    assert hf["garfa"] != hf["base"]  # the chosen rho really changes greedy output
    assert vl["garfa"] == hf["garfa"]
    assert vl["garfa"] != vl["base"]


def test_garfa_equals_coloc_garfa_patch_with_cache(runs):
    hf, vl = runs
    assert vl["garfa"] == hf["garfa_lib"]


def test_lora_and_lora_with_garfa_equal_hf(runs):
    hf, vl = runs
    assert hf["lora"] != hf["base"] and hf["lora_garfa"] != hf["garfa"]  # the adapter matters
    assert vl["lora"] == hf["lora"]
    assert vl["lora_garfa"] == hf["lora_garfa"]
