"""``coloc finetune``: one LS-LoRA + GARFA run on Ray Train (YAML config, CLI flags override it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coloc_ray.errors import UserError

# Every FinetuneConfig field is a flag (``--max-steps``...), the nested data config's too (``--max-records``);
# old names that differ from their field's stay as aliases.
ALIASES = {"max_steps": ["--steps"]}
NOT_FLAGS = ("data",)  # a nested model: its own fields are flags


def register(sub) -> None:
    """Add ``coloc finetune`` to the CLI: its flags derived from FinetuneConfig (``cli/model_flags.py``)."""
    from coloc_ray.cli.model_flags import add_model_flags
    from coloc_ray.finetune.config import DataConfig, FinetuneConfig

    p = sub.add_parser("finetune", help="LS-LoRA + GARFA fine-tuning on Ray Train",
                       description="Fine-tune LoRA on --lora-layers and GARFA on --garfa-layers (METHOD 4-6). "
                                   "Flags override the --config file; absent ones keep FinetuneConfig's defaults.")
    p.add_argument("--config", help="YAML of FinetuneConfig keys (a top-level 'finetune:' section is also read)")
    # model / layer sets may come from --config: build_config checks them (require=False)
    add_model_flags(p, FinetuneConfig, exclude=NOT_FLAGS, aliases=ALIASES, require=False)
    add_model_flags(p.add_argument_group("training data (FinetuneConfig.data)"), DataConfig)
    p.add_argument("--address", help="Ray address to join (default: a local Ray on 127.0.0.1)")
    p.add_argument("--out", required=True, help="output directory (adapter, metrics.json, config.json)")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """Merge the YAML (if any) with the CLI flags (flags win) and validate it."""
    from coloc_ray.cli.model_flags import model_kwargs
    from coloc_ray.cli.study import check_text_file
    from coloc_ray.finetune.config import DataConfig, FinetuneConfig, load_yaml, parse_config

    if args.config:
        check_text_file(args.config, "--config")
    data = load_yaml(args.config) if args.config else {}
    data.update(model_kwargs(args, FinetuneConfig, exclude=NOT_FLAGS))
    given = model_kwargs(args, DataConfig)
    if given:
        old = data.get("data")
        data["data"] = {**old, **given} if isinstance(old, dict) else given
    for key in ("model", "lora_layers", "garfa_layers"):
        if key not in data:
            raise UserError(f"--{key.replace('_', '-')} is required (or set {key} in --config)")
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
