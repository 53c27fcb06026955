"""The GPU suite: LoRA + GARFA training throughput, GARFA's overhead, peak memory and the RoPE probe on one GPU.

Run by ``bench/gpu_suite.sh`` (which says how); writes one JSON. Built for a lent H100/H200 with torch,
transformers and PEFT only (no hub, no bitsandbytes, no vLLM, no Ray): the model is Llama-3.1-8B's public
architecture with random bf16 weights, built on the GPU from the config written out below. Every section runs
on what is installed and records ``skipped: <why>`` for what is not. ``--dry`` runs the same code on CPU at
tiny shapes (the test suite does, so the script cannot rot) and checks one number against a reference:
LoRA + GARFA with rho = 0 must give the plain PEFT LoRA loss on the same batch.

Training configurations, all on the same random batch (same LoRA count, r 16, the 7 projections):
``lora_late`` (plain HF+PEFT, the baseline), ``lora_early`` (same count of early layers: backward runs deeper),
``lora_late+garfa_early`` (the study's shape: GARFA below LoRA pulls the backward down to GARFA's lowest layer),
``lora_late+garfa_late`` (GARFA on the LoRA layers: its own cost, no deeper backward).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # coloc_ray from this checkout, no install

# meta-llama/Llama-3.1-8B config.json (public), the fields that shape compute.
LLAMA31_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 131072,
              "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "hidden_act": "silu",
              "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192}}
TINY = {**LLAMA31_8B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 8, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512}
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(shape: dict, device: str, dtype):
    """A LlamaForCausalLM of ``shape`` with random weights, made directly on ``device``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape)
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 directly: an fp32 8B would need 32 GB before the cast
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def attach(model, lora_layers: list[int], garfa_layers: list[int], r: int = 16):
    """Plain PEFT LoRA on ``lora_layers`` (+ GARFA on ``garfa_layers``); returns (model, trainable params)."""
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=PROJ,
                                            layers_to_transform=lora_layers, layers_pattern="layers"))
    if garfa_layers:
        from coloc_ray.garfa import apply_garfa

        apply_garfa(peft, garfa_layers)
    return peft, [p for p in peft.parameters() if p.requires_grad]


def detach(peft) -> None:
    """Undo ``attach`` on the shared base (GARFA patch off, LoRA layers unloaded) for the next configuration."""
    from coloc_ray.garfa import get_garfa, remove_garfa

    if get_garfa(peft) is not None:
        remove_garfa(peft)
    peft.unload()


def time_steps(model, params, batch, steps: int, warmup: int, sync) -> dict:
    """AdamW steps on ``batch``; seconds per step after ``warmup``, first loss, peak memory."""
    import torch

    opt = torch.optim.AdamW(params, lr=1e-4)
    first = None
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t, cpu = time.perf_counter(), time.process_time()
        loss = model(input_ids=batch, labels=batch).loss
        first = float(loss.detach()) if first is None else first
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    s, c = (time.perf_counter() - t) / steps, (time.process_time() - cpu) / steps
    return {"step_s": round(s, 4), "tokens_per_s": round(batch.numel() / s, 1), "cpu_step_s": round(c, 4),
            "first_loss": first,
            "trainable_params": sum(p.numel() for p in params)}


def training(model, args, dev: str, sync, mem) -> dict:
    import torch

    L = model.config.num_hidden_layers
    k = args.num_lora_layers
    early, late = list(range(k)), list(range(L - k, L))
    batch = torch.randint(0, model.config.vocab_size, (args.batch, args.seq),
                          generator=torch.Generator().manual_seed(0)).to(dev)
    configs = {"lora_late": (late, []), "lora_early": (early, []), "lora_late+garfa_early": (late, early),
               "lora_late+garfa_late": (late, late)}
    out = {"batch": args.batch, "seq": args.seq, "lora_layers_late": late, "lora_layers_early": early}
    for name, (lo, ga) in configs.items():
        mem(reset=True)
        peft, params = attach(model, lo, ga)
        out[name] = {**time_steps(peft, params, batch, args.steps, args.warmup, sync), "peak_mem_gib": mem()}
        detach(peft)
    base = out["lora_late"]["step_s"]  # wall on the GPU; CPU time beside it (the figure on a shared CPU box)
    out["garfa_overhead"] = {k2: round(out[k2]["step_s"] / base, 3) for k2 in configs if k2 != "lora_late"}
    out["cpu_ratio_vs_lora_late"] = {k2: round(out[k2]["cpu_step_s"] / max(out["lora_late"]["cpu_step_s"], 1e-9), 3)
                                     for k2 in configs if k2 != "lora_late"}
    return out


def rho0_check(model, dev: str) -> dict:
    """LoRA + GARFA at rho = 0 against plain LoRA, same weights, same batch: the losses must be equal."""
    import torch

    L = model.config.num_hidden_layers
    batch = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1)).to(dev)
    peft, _ = attach(model, [L - 1], [])
    with torch.no_grad():
        plain = float(peft(input_ids=batch, labels=batch).loss)
        from coloc_ray.garfa import apply_garfa, remove_garfa

        apply_garfa(peft, list(range(L)))
        garfa = float(peft(input_ids=batch, labels=batch).loss)
        remove_garfa(peft)
    peft.unload()
    return {"plain_lora_loss": plain, "garfa_rho0_loss": garfa, "abs_diff": abs(plain - garfa)}


def rope_probe(model, args, dev: str, sync) -> dict:
    """The RoPE-influence probe (cached mode) on a few layers of the random model, on the device."""
    import random

    from coloc_ray.models.tiny import byte_tokenizer
    from coloc_ray.probes.rope_influence import rope_layer_losses

    tok = byte_tokenizer()
    rng = random.Random(0)
    texts = ["".join(rng.choice("abcdefghij klmnop\n") for _ in range(args.probe_len)) for _ in range(args.probe_texts)]
    layers = list(range(0, model.config.num_hidden_layers, max(1, model.config.num_hidden_layers // 4)))
    kw = dict(factors=[2.0], layers=layers, max_len=args.probe_len, batch_size=args.probe_texts)
    res = {}
    for mode in ("cached", "naive"):
        sync()
        t = time.perf_counter()
        r = rope_layer_losses(model, tok, texts, naive=mode == "naive", **kw)
        sync()
        res[mode + "_s"] = round(time.perf_counter() - t, 3)
        res[mode + "_losses"] = r["losses"]
    res.update(layers=layers, texts=len(texts), max_len=args.probe_len, tokens=r["num_tokens"])
    return res


def _section(out: dict, name: str, fn) -> None:
    t = time.perf_counter()
    try:
        out[name] = fn()
    except Exception as e:  # noqa: BLE001 - one failed section must not lose the others' numbers
        out[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    out.setdefault("section_s", {})[name] = round(time.perf_counter() - t, 1)
    print(f"[gpu_suite] {name}: {json.dumps(out[name])[:300]}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="CPU, tiny shapes (the test suite's run)")
    ap.add_argument("--out", default="gpu_suite.json")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--num-lora-layers", type=int, default=None)
    ap.add_argument("--probe-texts", type=int, default=None)
    ap.add_argument("--probe-len", type=int, default=None)
    args = ap.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.dry
    d = dict(batch=2, seq=32, steps=2, num_lora_layers=2, probe_texts=2, probe_len=32) if not cuda else \
        dict(batch=2, seq=2048, steps=5, num_lora_layers=8, probe_texts=8, probe_len=1024)
    for k, v in d.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if not cuda:
        torch.set_num_threads(1)  # tiny shapes: more threads only spin-wait on a shared CPU box
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def mem(reset: bool = False):
        if not cuda:
            return None
        if reset:
            torch.cuda.reset_peak_memory_stats()
            return None
        return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)

    out = {"mode": "gpu" if cuda else ("dry" if args.dry else "cpu-no-cuda"), "args": vars(args),
           "versions": _versions(), "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
           "shape": "llama-3.1-8b (random bf16)" if cuda else "tiny llama (8 layers, hidden 64, fp32)"}
    if not args.dry and not cuda:
        out["skipped"] = "no CUDA device: run with --dry for the CPU check, or on a GPU machine"
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps(out, indent=2))
        return 1
    t = time.perf_counter()
    model = build(LLAMA31_8B if cuda else TINY, dev, dtype)
    out["build_s"] = round(time.perf_counter() - t, 1)
    model.config.use_cache = False
    _section(out, "rho0_check", lambda: rho0_check(model, dev))
    _section(out, "training", lambda: training(model, args, dev, sync, mem))
    _section(out, "rope_probe", lambda: rope_probe(model, args, dev, sync))
    out["qlora_4bit"] = ({"skipped": "bitsandbytes not installed on this machine"}
                         if importlib.util.find_spec("bitsandbytes") is None else
                         {"skipped": "not wired into the suite yet (bitsandbytes present)"})
    out["vllm_generation"] = ({"skipped": "vllm not installed on this machine"}
                              if importlib.util.find_spec("vllm") is None else
                              {"skipped": "needs a model directory; run bench/bench_vllm_vs_hf.py there"})
    out["peak_mem_gib"] = mem()
    Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"[gpu_suite] wrote {args.out}")
    return 0 if all("error" not in out[s] for s in ("rho0_check", "training", "rope_probe")) else 1


def _versions() -> dict:
    from importlib import metadata

    res = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "vllm"):
        try:
            res[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            res[name] = None
    return res


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
