"""Greedy generation throughput: vLLM with the GARFA plugin vs HF generate with the GARFA patch, one run.

Both generate the same prompts greedily with the same GARFA scalers (nonzero rho on 5 layers). HF runs batched
(left padding) in this process; vLLM runs through ``coloc_ray.evaluation.vllm_backend.run_jobs`` (the vllm venv
in a subprocess when vLLM is not importable here). Throughput = new tokens / generation wall time, model load
excluded (reported apart); also per CPU-second (this process for HF, the vLLM process tree for vLLM), the
figure to read on a shared box. Also reports how many prompts gave identical token ids in both.

Run: .venv/bin/python bench/bench_vllm_vs_hf.py [--num-prompts 8 --max-new-tokens 64 --hf-batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

PROMPTS = ["def fibonacci(n):", "The capital of France is", "Water freezes at", "import numpy as np\n",
           "Question: What is 12 times 7?\nAnswer:", "The three primary colors are", "class Stack:\n",
           "In 1969, the first humans", "def is_palindrome(s):", "The speed of light is",
           "Photosynthesis is the process", "SELECT name FROM users WHERE", "A prime number is",
           "The largest planet in the solar system", "def quicksort(arr):", "Once upon a time,"]
GARFA_LAYERS = [0, 1, 2, 5, 12]


def _garfa_dir(lm, out: Path) -> Path:
    from coloc_ray.garfa import GarfaScalers, save_garfa

    s = GarfaScalers(GARFA_LAYERS, lm.info.num_kv_heads, lm.info.head_dim)
    with torch.no_grad():
        s.rho.copy_(torch.randn(s.rho.shape, generator=torch.Generator().manual_seed(0)) * 1.5)
    save_garfa(s, out, lm.info)
    return out


def hf_generate(lm, prompts: list[str], n: int, batch: int) -> tuple[list[list[int]], float, float, int]:
    """Batched greedy HF generate; returns (new ids per prompt, wall s, process CPU s, new-token count)."""
    tok, model = lm.tokenizer, lm.model
    tok.padding_side = "left"
    out, new = [], 0
    t, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True)
            gen = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
            for row in gen[:, enc.input_ids.shape[1]:].tolist():
                ids = row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row
                out.append(ids)
                new += len(ids)
    return out, time.perf_counter() - t, time.process_time() - cpu, new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--hf-batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="float32", help="both backends (fp32: the HF probes' precision)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for HF (vLLM-CPU serves with 1 on this 2-core box: same footing)")
    ap.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = ap.parse_args()

    from coloc_ray.evaluation.vllm_backend import run_jobs
    from coloc_ray.garfa import load_garfa
    from coloc_ray.models import load_model

    torch.set_num_threads(args.threads)
    prompts = (PROMPTS * (args.num_prompts // len(PROMPTS) + 1))[: args.num_prompts]
    t = time.perf_counter()
    lm = load_model(args.model, dtype=getattr(torch, args.dtype))
    hf_load = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        gdir = _garfa_dir(lm, Path(tmp) / "garfa")
        load_garfa(lm.model, gdir)
        hf_ids, hf_s, hf_cpu, hf_new = hf_generate(lm, prompts, args.max_new_tokens, args.hf_batch_size)
        res = run_jobs([{"model_dir": lm.path, "prompts": prompts, "max_new_tokens": args.max_new_tokens,
                         "adapter_dir": str(gdir), "dtype": args.dtype, "max_model_len": 512}])[0]
    same = sum(a == b for a, b in zip(hf_ids, res["token_ids"]))
    load = os.getloadavg()[0]
    row = {"model": args.model, "loadavg_1m_end": round(load, 1), "prompts": len(prompts),
           "max_new_tokens": args.max_new_tokens,
           "dtype": args.dtype, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "hf_batch": args.hf_batch_size, "hf_load_s": round(hf_load, 1), "hf_gen_s": round(hf_s, 2),
           "hf_tok_s": round(hf_new / hf_s, 1), "vllm_load_s": round(res["load_s"], 1),
           "vllm_gen_s": round(res["gen_s"], 2), "vllm_tok_s": round(res["new_tokens"] / res["gen_s"], 1),
           "speedup_wall": round((res["new_tokens"] / res["gen_s"]) / (hf_new / hf_s), 2),
           "hf_tok_per_cpu_s": round(hf_new / hf_cpu, 1),
           "vllm_tok_per_cpu_s": round(res["new_tokens"] / res["gen_cpu_s"], 1),
           "speedup_cpu": round((res["new_tokens"] / res["gen_cpu_s"]) / (hf_new / hf_cpu), 2),
           "identical_prompts": f"{same}/{len(prompts)}"}
    print(json.dumps(row, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":  # vLLM may run in this process and spawns its engine: keep the guard
    main()
