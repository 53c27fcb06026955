"""``coloc eval``: score a model (optionally + adapter) on METHOD 8's benchmarks."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    from coloc_ray.evaluation.config import ALL_BENCHMARKS

    p = sub.add_parser("eval", help="evaluate a model (+ adapter) on MMLU, GPQA, HumanEval+, MATH, MGSM, ARC")
    p.add_argument("--model", required=True, help="alias, hub id, HF directory or .gguf file")
    p.add_argument("--adapter", help="a `coloc finetune` output directory (LoRA and/or GARFA)")
    p.add_argument("--benchmarks", default=",".join(ALL_BENCHMARKS),
                   help=f"comma-separated, from: {','.join(ALL_BENCHMARKS)} (default: all)")
    p.add_argument("--limit", type=int, help="about N items per benchmark, stratified, seeded (default: all)")
    p.add_argument("--source", choices=["offline", "hub"], default="offline",
                   help="offline: the project's task YAMLs over the shared data; hub: lm-eval's standard tasks")
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="HumanEval+ generation backend")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=512, help="generation budget (MATH, MGSM, HumanEval+)")
    p.add_argument("--prompt-style", choices=["auto", "chat", "completion"], default="auto",
                   help="HumanEval+ prompt (auto: chat if the tokenizer has a chat template, as EvalPlus does)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-guard", action="store_true", help="skip the check that the adapter changes the logits")
    p.add_argument("--tracking-uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or ./mlruns.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--parent-run-id", help="nest the MLflow run under this run")
    p.add_argument("--out", required=True, help="output dir: eval.json, items/<benchmark>.jsonl")
    p.set_defaults(func=_eval)


def _eval(args) -> int:
    from pydantic import ValidationError

    from coloc_ray.errors import UserError
    from coloc_ray.evaluation.api import run_eval
    from coloc_ray.evaluation.config import EvalConfig

    try:
        cfg = EvalConfig(
            model=args.model, adapter=args.adapter, benchmarks=args.benchmarks, limit=args.limit,
            source=args.source, backend=args.backend, batch_size=args.batch_size, seed=args.seed,
            max_new_tokens=args.max_new_tokens, prompt_style=args.prompt_style, guard=not args.no_guard,
            tracking=not args.no_tracking, tracking_uri=args.tracking_uri, parent_run_id=args.parent_run_id)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']} "
                        f"(got {err.get('input')!r})") from None
    _check_out(args.out)
    if args.adapter:  # an incomplete or corrupt adapter is refused before the model loads (seconds, not minutes)
        from coloc_ray.finetune.adapter import MODEL_INFO, _read_json_file, adapter_parts

        if not Path(args.adapter).is_dir():
            raise UserError(f"--adapter {args.adapter!r}: no such directory; give a `coloc finetune` output dir")
        if (Path(args.adapter) / MODEL_INFO).is_file():
            _read_json_file(Path(args.adapter) / MODEL_INFO, "re-run `coloc finetune` or restore the file")
        adapter_parts(args.adapter)
    replacing = (Path(args.out) / "eval.json").is_file()
    results = run_eval(cfg, args.out)
    if replacing:
        print(f"coloc: replaced the earlier evaluation in {args.out} (eval.json, items/)", file=sys.stderr)
    print(json.dumps({b: {k: r[k] for k in ("score", "ci_low", "ci_high", "n", "metric")}
                      for b, r in results.items()}, indent=2))
    return 0


def _check_out(out: str, flag: str = "--out") -> None:
    """``--out`` must be a directory we can create or write, checked before any work by writing (and removing)
    a probe directory in its nearest existing ancestor: that also catches read-only mounts and /proc, even as
    root. Nothing is left behind."""
    import tempfile
    from pathlib import Path

    from coloc_ray.errors import UserError

    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {out!r} is a file; give a directory")
    anchor = next((a for a in [p, *p.parents] if a.exists()), Path("."))
    if not anchor.is_dir():
        raise UserError(f"{flag} {out!r}: {str(anchor)!r} is a file, not a directory; give another path")
    try:
        Path(tempfile.mkdtemp(dir=anchor, prefix=".coloc-write-check-")).rmdir()
    except OSError as e:
        raise UserError(f"{flag} {out!r}: cannot write in {str(anchor)!r} ({e.strerror}); give a directory you "
                        "can write") from None
