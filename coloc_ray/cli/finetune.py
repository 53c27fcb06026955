"""``coloc finetune``: one LS-LoRA + GARFA run on Ray Train (YAML config, CLI flags override it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coloc_ray.errors import UserError

# CLI flag -> FinetuneConfig key, for the plain scalar overrides.
SCALAR_FLAGS = {
    "model": "model", "steps": "max_steps", "num_workers": "num_workers", "quant": "quant", "seed": "seed",
    "max_len": "max_len", "batch_size": "batch_size", "grad_accum": "grad_accum", "lr": "lr",
    "checkpoint_every": "checkpoint_every", "eval_every": "eval_every", "tracking_uri": "tracking_uri",
    "experiment": "experiment", "parent_run_id": "parent_run_id", "strategy": "strategy",
    "cpus_per_worker": "cpus_per_worker", "max_failures": "max_failures", "run_name": "run_name",
}


def parse_layers(text: str, flag: str) -> list[int]:
    """``"20,21,29"`` -> [20, 21, 29]; ``""`` -> [] (that part off)."""
    text = text.strip()
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated layer indices like 20,21,29 "
                        "(or \"\" for none)") from None


def register(sub) -> None:
    """Add ``coloc finetune`` to the CLI."""
    p = sub.add_parser("finetune", help="LS-LoRA + GARFA fine-tuning on Ray Train",
                       description="Fine-tune LoRA on --lora-layers and GARFA on --garfa-layers (METHOD 4-6).")
    p.add_argument("--config", help="YAML of FinetuneConfig keys (a top-level 'finetune:' section is also read)")
    p.add_argument("--model", help="alias (smollm2-135m, tiny-gqa), HF dir, .gguf or hub id")
    p.add_argument("--lora-layers", help='layer set X, e.g. 20,21,29 ("" = no LoRA)')
    p.add_argument("--garfa-layers", help='layer set Y, e.g. 0,1,2 ("" = no GARFA)')
    p.add_argument("--steps", type=int, help="optimizer steps (max_steps)")
    p.add_argument("--num-workers", type=int, help="Ray Train workers")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (fractional allowed)")
    p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU share per worker")
    p.add_argument("--quant", choices=["4bit", "none", "auto"], help="base weights (auto: 4bit iff CUDA)")
    p.add_argument("--strategy", choices=["ddp", "fsdp", "zero3"], help="data-parallel strategy")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-len", type=int, help="tokens per sequence")
    p.add_argument("--batch-size", type=int, help="micro-batch per worker")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, help="LoRA learning rate (GARFA: x garfa_lr_ratio)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--eval-every", type=int, help="steps between held-out evaluations")
    p.add_argument("--max-failures", type=int, help="worker-group restarts from the last checkpoint")
    p.add_argument("--max-records", type=int, help="cap on training records per dataset")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--experiment", help="MLflow experiment")
    p.add_argument("--parent-run-id", help="MLflow run to nest under")
    p.add_argument("--run-name", help="MLflow / Ray Train run name")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--address", help="Ray address to join (default: a local Ray on 127.0.0.1)")
    p.add_argument("--out", required=True, help="output directory (adapter, metrics.json, config.json)")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """Merge the YAML (if any) with the CLI flags (flags win) and validate it."""
    from coloc_ray.cli.study import check_text_file
    from coloc_ray.finetune.config import load_yaml, parse_config

    if args.config:
        check_text_file(args.config, "--config")
    data = load_yaml(args.config) if args.config else {}
    for flag, key in SCALAR_FLAGS.items():
        val = getattr(args, flag, None)
        if val is not None:
            data[key] = val
    if args.lora_layers is not None:
        data["lora_layers"] = parse_layers(args.lora_layers, "--lora-layers")
    if args.garfa_layers is not None:
        data["garfa_layers"] = parse_layers(args.garfa_layers, "--garfa-layers")
    if args.use_gpu:
        data["use_gpu"] = True
    if args.no_tracking:
        data["tracking"] = False
    if args.max_records is not None:
        data["data"] = {**data.get("data", {}), "max_records": args.max_records}
    for key, flag in (("model", "--model"), ("lora_layers", "--lora-layers"), ("garfa_layers", "--garfa-layers")):
        if key not in data:
            raise UserError(f"{flag} is required (or set {key} in --config)")
    return parse_config(data, where=args.config or "coloc finetune")


def run(args: argparse.Namespace) -> int:
    """Validate everything, then train; prints the final metrics as one JSON line."""
    from coloc_ray.cli.evaluate import _check_out
    from coloc_ray.finetune.api import run_finetune
    from coloc_ray.models.loading import check_model_spec

    cfg = build_config(args)  # run_finetune validates against the model before Ray starts
    _check_out(args.out)
    check_model_spec(cfg.model)  # an unsupported family or a corrupt config.json, before Ray starts
    earlier = [n for n in ("metrics.json", "adapter_config.json", "garfa.json") if (Path(args.out) / n).is_file()]
    metrics = run_finetune(cfg, args.out, address=args.address)
    if earlier:
        print(f"coloc: replaced the earlier fine-tune output in {args.out} ({', '.join(earlier)} ...)",
              file=sys.stderr)
    keep = ("final_train_loss", "final_eval_loss", "steps", "tokens_per_s", "lora_params", "garfa_params")
    print(json.dumps({k: metrics.get(k) for k in keep}))
    return 0
