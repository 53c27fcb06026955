"""LoRA step cost on SmolLM2 by depth: the same number of LoRA layers late vs early, LoRA-only vs LoRA + GARFA.

Autograd only walks back to the lowest layer with a trainable parameter: with every base weight frozen, a
LoRA set on the last k layers never back-propagates through the first L - k blocks, while the same count on
the first k layers back-propagates through all L. GARFA's rho lives in the attention of its layers, so GARFA
on early layers (the study's shape: LoRA on X late, GARFA on Y early) pulls the backward down to them again.
The configurations are ``bench/gpu_suite.py``'s (same code, here on the real SmolLM2 on CPU): all on one
fixed batch, AdamW, after one warm-up step. CPU seconds per step (single-threaded) is the figure to read on a
shared box; wall time is reported beside it, with the load average.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_layer_cost.py --num-lora-layers 3 --batch 2 --seq 128 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--num-lora-layers", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    import gpu_suite
    from coloc_ray.models import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model).model
    model.config.use_cache = False
    load0 = os.getloadavg()
    res = gpu_suite.training(model, args, "cpu", lambda: None, lambda reset=False: None)
    res.update(model=args.model, threads=args.threads, num_layers=model.config.num_hidden_layers,
               loadavg_start=load0, loadavg_end=os.getloadavg())
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
