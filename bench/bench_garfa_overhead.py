"""GARFA training overhead: step time (forward + backward + AdamW) of LoRA-only vs LoRA + GARFA.

Two identically initialised PEFT models (same seed, same LoRA layers), one batch, one run; the arms alternate
(A B, B A, ...) so drift on a shared machine hits both equally. Reports medians and the ratio.

    .venv/bin/python bench/bench_garfa_overhead.py                 # SmolLM2-135M, LoRA on 3 layers, 2 x 256
    .venv/bin/python bench/bench_garfa_overhead.py --quick         # tiny-gqa, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(model_name: str, layers: list[int]):
    """The PEFT LoRA model (METHOD 4 defaults: r 16, alpha 32, dropout 0.05) on ``layers``."""
    from peft import LoraConfig, get_peft_model

    from coloc_ray.models import load_model

    lm = load_model(model_name, attn_implementation="sdpa")
    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=PROJ,
                     layers_to_transform=layers, layers_pattern="layers", task_type="CAUSAL_LM")
    return get_peft_model(lm.model, cfg), lm.info


def make_optimizer(model, lr: float = 2e-4):
    """AdamW, two groups as in METHOD 6: LoRA (lr) and GARFA (5 x lr) when present."""
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "garfa" not in n]
    garfa = [p for n, p in model.named_parameters() if p.requires_grad and "garfa" in n]
    groups = [{"params": lora, "lr": lr}] + ([{"params": garfa, "lr": 5 * lr}] if garfa else [])
    return torch.optim.AdamW(groups, weight_decay=0.01)


def step(model, opt, batch) -> tuple[float, float]:
    """One training step; returns (wall seconds, CPU seconds of this process).

    CPU time is the robust figure on a shared machine: other processes stretch wall time, not our CPU time.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    opt.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def run(model_name: str, layers: list[int], batch: int, seq: int, warmup: int, steps: int) -> dict:
    from coloc_ray.garfa import apply_garfa

    arms = {}
    for name in ("lora", "garfa"):
        torch.manual_seed(0)  # identical LoRA init in both arms
        model, info = build(model_name, layers)
        scalers = apply_garfa(model, layers) if name == "garfa" else None
        model.train()
        arms[name] = (model, make_optimizer(model), scalers)
    data = torch.randint(0, info.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))

    wall = {"lora": [], "garfa": []}
    cpu = {"lora": [], "garfa": []}
    for i in range(warmup + steps):
        order = ("lora", "garfa") if i % 2 == 0 else ("garfa", "lora")
        for name in order:
            model, opt, _ = arms[name]
            dw, dc = step(model, opt, data)
            if i >= warmup:
                wall[name].append(dw)
                cpu[name].append(dc)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "model": model_name, "layers": layers, "batch": batch, "seq": seq, "warmup": warmup, "steps": steps,
        "median_s": med, "median_cpu_s": med_cpu, "wall_s": wall, "cpu_s": cpu,
        "overhead": med["garfa"] / med["lora"] - 1.0, "overhead_cpu": med_cpu["garfa"] / med_cpu["lora"] - 1.0,
        "garfa_params": arms["garfa"][2].rho.numel(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
        "machine": platform.machine(),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny-gqa instead of SmolLM2 (seconds, for CI)")
    p.add_argument("--model", default=None, help="model alias (default smollm2-135m, or tiny-gqa with --quick)")
    p.add_argument("--layers", default=None, help="comma-separated layers for LoRA and GARFA (default 3 spread)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared CPU)")
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = a.model or ("tiny-gqa" if a.quick else "smollm2-135m")
    layers = [int(x) for x in a.layers.split(",")] if a.layers else ([0, 2, 3] if a.quick else [5, 17, 29])
    res = run(model, layers, a.batch, a.seq, a.warmup, a.steps)
    for key, label in (("median_s", "wall"), ("median_cpu_s", "CPU")):
        m = res[key]
        print(f"{model} [{label}]: LoRA-only {m['lora'] * 1000:.1f} ms/step, LoRA+GARFA {m['garfa'] * 1000:.1f} "
              f"ms/step (median of {a.steps}); overhead {(m['garfa'] / m['lora'] - 1) * 100:+.2f} %")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
