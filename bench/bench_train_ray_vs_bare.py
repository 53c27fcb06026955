"""Tokens/s of LS-LoRA training on one Ray Train worker vs the bare loop, same config, one run.

Both paths run the same :class:`coloc_ray.finetune.loop.Loop` with the same data, seed and one intra-op
thread; the Ray path adds the worker process, the per-step MLflow-free hooks and checkpoint reports.
``tokens_per_s`` counts only time inside training steps; ``wall`` ratios include model loading, Ray
worker start-up and checkpoints.

    .venv/bin/python bench/bench_train_ray_vs_bare.py --model smollm2-135m --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--lora-layers", default="20,21,29")
    ap.add_argument("--garfa-layers", default="0,1,2")
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--checkpoint-every", type=int, default=6)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ft-"))
    # A private Ray auth token (never the user's ~/.ray/auth_token), as the tests do.
    (tmp / "token").write_text(secrets.token_hex(32))
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp / "token"))

    from coloc_ray.finetune.api import run_finetune
    from coloc_ray.finetune.bare import run_bare
    from coloc_ray.finetune.config import FinetuneConfig
    from coloc_ray.raycluster import ensure_ray, shutdown_ray

    layers = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    cfg = FinetuneConfig(
        model=args.model, lora_layers=layers(args.lora_layers), garfa_layers=layers(args.garfa_layers),
        max_steps=args.steps, batch_size=2, grad_accum=2, max_len=args.max_len, quant="none",
        checkpoint_every=args.checkpoint_every, eval_every=10**6, eval_max_records=8, log_every=4,
        cpus_per_worker=1, tracking=False, data={"max_records": 400})
    t0 = time.perf_counter()
    bare = run_bare(cfg)
    bare_wall = time.perf_counter() - t0
    ensure_ray(num_cpus=2)
    try:
        t0 = time.perf_counter()
        ray_m = run_finetune(cfg, tmp / "out")
        ray_wall = time.perf_counter() - t0
    finally:
        shutdown_ray()
    print(json.dumps({
        "model": args.model, "steps": args.steps, "tokens": bare["tokens"],
        "bare_tokens_per_s": round(bare["tokens_per_s"], 1), "ray_tokens_per_s": round(ray_m["tokens_per_s"], 1),
        "ratio_tokens_per_s": round(ray_m["tokens_per_s"] / bare["tokens_per_s"], 3),
        "bare_wall_s": round(bare_wall, 1), "ray_wall_s": round(ray_wall, 1),
        "same_final_loss": abs(ray_m["final_train_loss"] - bare["final_train_loss"]) <= 1e-6 * abs(bare["final_train_loss"]),
    }, indent=2))


if __name__ == "__main__":
    main()
