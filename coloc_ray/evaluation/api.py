"""``run_eval``: load the model (+ adapter, guarded), run each benchmark, save scores, CIs and every item.

Output (``out_dir``, written only when every benchmark finished): ``eval.json``
``{benchmark: {score, ci_low, ci_high, n, metric, ...}}``, ``items/<benchmark>.jsonl`` rows
``{id, prompt_hash, prediction, target, correct, ...}``, and ``eval_config.json`` (the resolved config,
versions, the guard's numbers) — logged to MLflow beside the scores.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from coloc_ray.errors import UserError
from coloc_ray.evaluation.config import EvalConfig
from coloc_ray.evaluation.registry import Benchmark, get_benchmarks

log = logging.getLogger(__name__)


def _inputs(cfg: EvalConfig, benches: list[Benchmark]) -> dict:
    """Each benchmark's items (offline, cut by --limit) — read before the model loads, so a missing
    data file fails in a second, not after a model load."""
    from coloc_ray.evaluation.offline import load_items

    out = {}
    for b in benches:
        if cfg.source == "offline" or b.runner == "evalplus":
            out[b.name] = load_items(b, cfg.limit, cfg.seed)
    return out


def _load(cfg: EvalConfig):
    """(model, tokenizer, model dir, guard numbers): the base model, with the adapter restored and guarded."""
    from coloc_ray.models import load_model

    if cfg.adapter and not Path(cfg.adapter).is_dir():
        raise UserError(f"--adapter {cfg.adapter!r}: no such directory; give a `coloc finetune` output dir")
    lm = load_model(cfg.model)
    model, guard = lm.model, None
    if cfg.adapter:
        from coloc_ray.finetune.adapter import load_adapted

        model = load_adapted(model, cfg.adapter)  # UserError for an adapter of another model
        if cfg.guard:
            from coloc_ray.evaluation.guard import check_adapter_effect

            guard = check_adapter_effect(model, lm.tokenizer, cfg.adapter)
    return model, lm.tokenizer, lm.path, guard


def _run_one(b: Benchmark, cfg: EvalConfig, model, tok, model_dir: str, inputs: dict, work: Path, state: dict):
    from coloc_ray.evaluation import harness

    if b.runner == "evalplus":
        from coloc_ray.evaluation.humanevalplus import run_humanevalplus

        tasks, _ = inputs[b.name]
        return run_humanevalplus(model, tok, tasks, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                 style=cfg.prompt_style, backend=cfg.backend, model_dir=model_dir,
                                 adapter_dir=cfg.adapter, n_workers=cfg.evalplus_workers)
    if "lm" not in state:  # one HFLM wrapper for all lm-eval benchmarks
        state["lm"] = harness.make_lm(model, tok, cfg.batch_size, cfg.max_length)
    if cfg.source == "hub":
        samples = harness.run_tasks(state["lm"], [b.hub_task], include_dir=None, num_fewshot=b.shots,
                                    limit=cfg.limit, seed=cfg.seed, max_gen_toks=cfg.max_new_tokens)
    else:
        from coloc_ray.evaluation.offline import render_tasks

        items, shots = inputs[b.name]
        inc = work / b.name
        tasks = render_tasks(b, items, shots, inc, cfg.max_new_tokens)
        samples = harness.run_tasks(state["lm"], tasks, include_dir=inc, num_fewshot=None, limit=None,
                                    seed=cfg.seed)
    return harness.samples_to_items(samples, b)


def run_eval(cfg: EvalConfig, out_dir, tracker=None) -> dict:
    """Evaluate ``cfg.model`` (+ ``cfg.adapter``) on ``cfg.benchmarks``; returns what eval.json holds.

    Args:
        cfg: the validated config.
        out_dir: where eval.json, items/ and eval_config.json go (nothing is written on failure).
        tracker: an open :class:`coloc_ray.tracking.Tracker` (a study trial's run): the eval is logged in a
            child run of it. None: a new run (nested under ``cfg.parent_run_id`` or the adapter's own run)
            when ``cfg.tracking``.
    """
    from coloc_ray.evaluation.stats import summarize
    from coloc_ray.io import versions

    benches = get_benchmarks(cfg.benchmarks)
    inputs = _inputs(cfg, benches)
    t0 = time.time()
    model, tok, model_dir, guard = _load(cfg)
    results, rows, state = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="coloc-eval-") as work:
        for b in benches:
            t = time.time()
            rows[b.name] = _run_one(b, cfg, model, tok, model_dir, inputs, Path(work), state)
            results[b.name] = {**summarize(rows[b.name], b.metric, b.stratum, b.macro, cfg.seed, cfg.n_bootstrap),
                               "wall_s": round(time.time() - t, 1)}
            log.info("%s: %s = %.4f [%.4f, %.4f] (n=%d, %.0f s)", b.name, b.metric, results[b.name]["score"],
                     results[b.name]["ci_low"], results[b.name]["ci_high"], results[b.name]["n"],
                     results[b.name]["wall_s"])
    resolved = {"config": cfg.model_dump(), "versions": versions(), "guard": guard, "model_dir": model_dir,
                "wall_s": round(time.time() - t0, 1),
                "benchmarks": {b.name: {"runner": b.runner, "shots": b.shots, "hub_task": b.hub_task,
                                        "stratum": b.stratum} for b in benches}}
    tr, own = _open_tracker(cfg, tracker)
    resolved["mlflow_run_id"] = tr.run_id if tr is not None else None
    status = "FAILED"
    try:
        _write(Path(out_dir), results, resolved, rows)
        if tr is not None:
            _log(tr, cfg, results, resolved, Path(out_dir))
        status = "FINISHED"
    finally:
        if own:
            tr.end(status)
    return results


def _write(out: Path, results: dict, resolved: dict, rows: dict[str, list[dict]]) -> None:
    """eval.json, eval_config.json and items/<benchmark>.jsonl, all or nothing."""
    from coloc_ray.io import staged_output, write_json

    with staged_output(out) as stage:
        write_json(stage / "eval.json", results)
        write_json(stage / "eval_config.json", resolved)
        (stage / "items").mkdir()
        for name, rs in rows.items():
            with open(stage / "items" / f"{name}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rs)


def _adapter_run_id(adapter: str | None) -> str | None:
    """The fine-tune's MLflow run id, if its metrics.json / config.json recorded one."""
    for name in ("metrics.json", "config.json"):
        p = Path(adapter or "") / name
        if adapter and p.is_file():
            rid = json.loads(p.read_text()).get("mlflow_run_id")
            if rid:
                return rid
    return None


def _open_tracker(cfg: EvalConfig, tracker):
    """(tracker to log into, whether we own it): the caller's, a new run, or (None, False) without tracking."""
    if tracker is not None:  # a caller's run (a study trial): nest a child, so eval params never collide
        return tracker.child("eval", tags={"coloc.stage": "eval"}).start(), True
    if not cfg.tracking:
        return None, False
    from coloc_ray.tracking import Tracker

    name = f"eval-{Path(cfg.model).name}" + (f"-{Path(cfg.adapter).name}" if cfg.adapter else "")
    tr = Tracker(cfg.tracking_uri, cfg.experiment, run_name=name,
                 parent_run_id=cfg.parent_run_id or _adapter_run_id(cfg.adapter), tags={"coloc.stage": "eval"})
    return tr.start(), True


def _log(tracker, cfg: EvalConfig, results: dict, resolved: dict, out: Path) -> None:
    tracker.log_params({"eval": cfg.model_dump()})
    tracker.log_metrics({f"{b}/{k}": r[k] for b, r in results.items() for k in ("score", "ci_low", "ci_high", "n")})
    tracker.log_dict(resolved, "eval/eval_config.json")
    tracker.log_artifact(out / "eval.json", "eval")
    tracker.log_artifacts(out / "items", "eval/items")
