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


def _needs_hf_model(cfg: EvalConfig, benches: list[Benchmark]) -> bool:
    """The HF model is loaded for the HF backend, for log-likelihood benchmarks kept on HF, and for the guard."""
    if cfg.backend == "hf" or (cfg.adapter and cfg.guard):
        return True
    return cfg.loglik_backend == "hf" and any(not b.generative for b in benches)


def _load(cfg: EvalConfig, precision: dict, need_model: bool):
    """(model or None, tokenizer, model dir, guard numbers): the base model, with the adapter restored and
    guarded, in the precision it was trained in (``precision["hf_quant"]``)."""
    from coloc_ray.models import load_model, resolve_model_dir

    if cfg.adapter and not Path(cfg.adapter).is_dir():
        raise UserError(f"--adapter {cfg.adapter!r}: no such directory; give a `coloc finetune` output dir")
    if not need_model:
        from transformers import AutoTokenizer

        path, extra = resolve_model_dir(cfg.model)
        tok = AutoTokenizer.from_pretrained(path, **extra)
        return None, tok, path, None
    quant = precision["hf_quant"]
    lm = load_model(cfg.model, quant=quant)  # as the fine-tune loads it (fp32, or NF4 with bf16 compute)
    model, guard = lm.model, None
    if cfg.adapter:
        from coloc_ray.finetune.adapter import load_adapted

        model = load_adapted(model, cfg.adapter, fingerprint=lm.fingerprint)  # UserError: another model's
        if cfg.guard:
            from coloc_ray.evaluation.guard import check_adapter_effect

            guard = check_adapter_effect(model, lm.tokenizer, cfg.adapter)
    return model, lm.tokenizer, lm.path, guard


def _start_engine(cfg: EvalConfig, precision: dict):
    """Start (not wait for) the evaluation's one vLLM engine, after the checks that need no engine."""
    from coloc_ray.evaluation.engine import Engine, check_garfa_file
    from coloc_ray.evaluation.vllm_backend import _resolve

    job = _resolve({"model_dir": cfg.model, "adapter_dir": cfg.adapter, "prompts": ["-"]})
    check_garfa_file(job["model_dir"], job["adapter_dir"])
    spec = {"model_dir": job["model_dir"], "adapter_dir": job["adapter_dir"], "seed": cfg.seed,
            "dtype": precision["engine"]["dtype"], "quantization": precision["engine"]["quantization"],
            "max_model_len": cfg.max_model_len, "engine_args": cfg.engine_args}
    return Engine(spec).start()


def _run_one(b: Benchmark, cfg: EvalConfig, ctx: dict, inputs: dict, work: Path, state: dict, tokens: list):
    from coloc_ray.evaluation import harness

    engine = ctx["engine"] if b.generative or cfg.loglik_backend == "vllm" else None
    if b.runner == "evalplus":
        from coloc_ray.evaluation.humanevalplus import run_humanevalplus

        tasks, _ = inputs[b.name]
        return run_humanevalplus(ctx["model"], ctx["tok"], tasks, max_new_tokens=cfg.max_new_tokens,
                                 batch_size=cfg.batch_size, style=cfg.prompt_style, n_workers=cfg.evalplus_workers,
                                 engine=engine, max_length=cfg.max_model_len, new_tokens=tokens)
    key = "engine_lm" if engine is not None else "hf_lm"
    if key not in state:  # one lm-eval wrapper per backend for all lm-eval benchmarks
        state[key] = (harness.make_engine_lm(engine, ctx["tok"], cfg.max_model_len, state.setdefault("tok", []))
                      if engine is not None else harness.make_lm(ctx["model"], ctx["tok"], cfg.batch_size,
                                                                 cfg.max_length))
    lm = state[key]
    n0 = len(state.get("tok", []))
    if cfg.source == "hub":
        samples = harness.run_hub(lm, b, limit=cfg.limit, seed=cfg.seed, max_gen_toks=cfg.max_new_tokens)
    else:
        from coloc_ray.evaluation.offline import render_tasks

        items, shots = inputs[b.name]
        inc = work / b.name
        tasks = render_tasks(b, items, shots, inc, cfg.max_new_tokens)
        samples = harness.run_tasks(lm, tasks, include_dir=inc, num_fewshot=None, limit=None, seed=cfg.seed)
    rows = harness.samples_to_items(samples, b)
    if engine is not None:
        tokens.extend(state["tok"][n0:])
    elif b.generative:  # HFLM does not count: re-tokenize what it generated
        tokens.extend(len(ctx["tok"](r.get("generation") or "", add_special_tokens=False)["input_ids"])
                      for r in rows)
    return rows


def run_eval(cfg: EvalConfig, out_dir, tracker=None) -> dict:
    """Evaluate ``cfg.model`` (+ ``cfg.adapter``) on ``cfg.benchmarks``; returns what eval.json holds.

    With ``backend="vllm"`` one vLLM engine (GARFA plugin + LoRA) is built for the whole evaluation and
    generates for every generative benchmark (MATH, MGSM, HumanEval+); log-likelihood benchmarks run where
    ``loglik_backend`` says. Before any scoring the engine is checked to apply the adapter.

    Args:
        cfg: the validated config.
        out_dir: where eval.json, items/ and eval_config.json go (nothing is written on failure).
        tracker: an open :class:`coloc_ray.tracking.Tracker` (a study trial's run): the eval is logged in a
            child run of it. None: a new run (nested under ``cfg.parent_run_id`` or the adapter's own run)
            when ``cfg.tracking``.
    """
    from coloc_ray.evaluation import harness
    from coloc_ray.evaluation.precision import resolve_precision
    from coloc_ray.evaluation.stats import summarize
    from coloc_ray.io import versions

    benches = get_benchmarks(cfg.benchmarks)
    from coloc_ray.models.ref import check_fingerprint, spec_fingerprint

    here = spec_fingerprint(cfg.model) if cfg.model_fingerprint or cfg.adapter else None  # cached file hashes
    if cfg.model_fingerprint:  # before any work: these weights, on this node, are the ones the study resolved
        check_fingerprint(cfg.model, here, cfg.model_fingerprint)
    if cfg.adapter:  # on every backend, before any model or engine loads: the adapter was trained on these weights
        from coloc_ray.finetune.adapter import check_adapter_weights

        check_adapter_weights(cfg.adapter, here, cfg.model)
    inputs = _inputs(cfg, benches)
    t0, cpu0 = time.time(), _cpu_s()
    precision = resolve_precision(cfg.quant, cfg.adapter, cfg.backend)
    use_engine = cfg.backend == "vllm"
    engine = _start_engine(cfg, precision) if use_engine else None  # loads while the HF model loads
    results, rows, state, engine_info, engine_guard = {}, {}, {}, None, None
    try:
        model, tok, model_dir, guard = _load(cfg, precision, _needs_hf_model(cfg, benches))
        if engine is not None:
            engine_info = engine.ready()
            if cfg.adapter and cfg.guard:
                from coloc_ray.evaluation.engine import check_engine_adapter

                engine_guard = check_engine_adapter(engine, tok, model)
        ctx = {"model": model, "tok": tok, "engine": engine}
        with tempfile.TemporaryDirectory(prefix="coloc-eval-") as work:
            for b in benches:
                t, cpu, tokens = time.time(), _cpu_s() + (engine.cpu_s if engine else 0.0), []
                rows[b.name] = _run_one(b, cfg, ctx, inputs, Path(work), state, tokens)
                cpu = _cpu_s() + (engine.cpu_s if engine else 0.0) - cpu
                results[b.name] = {**summarize(rows[b.name], b.metric, b.stratum, b.macro, cfg.seed, cfg.n_bootstrap),
                                   "wall_s": round(time.time() - t, 1), "cpu_s": round(cpu, 1),
                                   "new_tokens": sum(tokens), "backend": _bench_backend(b, cfg),
                                   "items_per_task": harness.items_per_task(rows[b.name])}
                log.info("%s: %s = %.4f [%.4f, %.4f] (n=%d, %.0f s, %s)", b.name, b.metric,
                         results[b.name]["score"], results[b.name]["ci_low"], results[b.name]["ci_high"],
                         results[b.name]["n"], results[b.name]["wall_s"], results[b.name]["backend"])
    finally:
        if engine is not None:
            engine.close()
    wall = time.time() - t0
    resolved = {"config": cfg.model_dump(), "versions": versions(), "guard": guard, "model_dir": model_dir,
                "wall_s": round(wall, 1),
                "run": _run_record(cfg, precision, engine_info, engine_guard, results, wall, _cpu_s() - cpu0),
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


def _bench_backend(b: Benchmark, cfg: EvalConfig) -> str:
    if cfg.backend == "vllm" and (b.generative or cfg.loglik_backend == "vllm"):
        return "vllm"
    return "hf"


def _cpu_s() -> float:
    """CPU seconds of this process and its children so far (the engine's included once it has exited)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _run_record(cfg, precision: dict, engine_info, engine_guard, results: dict, wall: float, cpu: float) -> dict:
    """What the evaluation ran on and what it cost (eval_config.json ``run``; the trial's cost table reads it)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"backend": cfg.backend, "loglik_backend": cfg.loglik_backend if cfg.backend == "vllm" else "hf",
            "precision": precision, "engine": engine_info, "engine_guard": engine_guard,
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "gpus": gpus, "gpu_s": round(wall * gpus, 1),
            "new_tokens": sum(r["new_tokens"] for r in results.values())}


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
