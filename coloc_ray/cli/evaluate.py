"""``coloc eval``: score a model (optionally + adapter) on METHOD 8's benchmarks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# EvalConfig fields that are not flags of ``coloc eval`` (none today: every field is a flag).
NOT_FLAGS: tuple[str, ...] = ()


def register(sub) -> None:
    """Add ``coloc eval``: one flag per EvalConfig field (names, help, choices and defaults from the model)."""
    from coloc_ray.cli.model_flags import add_model_flags
    from coloc_ray.evaluation.config import EvalConfig

    p = sub.add_parser("eval", help="evaluate a model (+ adapter) on MMLU, GPQA, HumanEval+, MATH, MGSM, ARC")
    add_model_flags(p, EvalConfig, exclude=NOT_FLAGS)
    p.add_argument("--out", required=True, help="output dir: eval.json, items/<benchmark>.jsonl")
    p.set_defaults(func=_eval)


def eval_config(args):
    """The EvalConfig of parsed ``coloc eval`` flags (only the flags given; EvalConfig's defaults for the rest)."""
    from coloc_ray.cli.model_flags import build_model
    from coloc_ray.evaluation.config import EvalConfig

    return build_model(EvalConfig, args, exclude=NOT_FLAGS)


def _eval(args) -> int:
    from coloc_ray.errors import UserError
    from coloc_ray.evaluation.api import run_eval

    cfg = eval_config(args)
    _check_out(args.out)
    if cfg.adapter:  # an incomplete or corrupt adapter is refused before the model loads (seconds, not minutes)
        from coloc_ray.finetune.adapter import MODEL_INFO, _read_json_file, adapter_parts

        if not Path(cfg.adapter).is_dir():
            raise UserError(f"--adapter {cfg.adapter!r}: no such directory; give a `coloc finetune` output dir")
        if (Path(cfg.adapter) / MODEL_INFO).is_file():
            _read_json_file(Path(cfg.adapter) / MODEL_INFO, "re-run `coloc finetune` or restore the file")
        adapter_parts(cfg.adapter)
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
