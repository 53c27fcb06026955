"""Run lm-eval tasks on an already-loaded model (so LoRA and GARFA are in the forward) and keep every item.

The model goes in through ``HFLM(pretrained=model, tokenizer=tok, ...)``; per-item results come from
lm-eval's own ``log_samples`` records, one row per item: ``{id, prompt_hash, prediction, target, correct}``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from coloc_ray.evaluation.registry import Benchmark

log = logging.getLogger(__name__)


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def make_lm(model, tokenizer, batch_size: int, max_length: int | None = None):
    """Wrap a loaded (possibly PEFT + GARFA) HF model for lm-eval; the model is used as is, not reloaded."""
    from lm_eval.models.huggingface import HFLM

    device = str(next(model.parameters()).device)
    kw = {"max_length": max_length} if max_length else {}
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device, **kw)


def run_tasks(lm, tasks: list[str], *, include_dir: Path | None, num_fewshot: int | None, limit: int | None,
              seed: int, max_gen_toks: int | None = None) -> dict[str, list[dict]]:
    """``lm_eval.simple_evaluate`` over ``tasks``; returns lm-eval's logged samples per task name.

    ``include_dir`` is the rendered offline task dir (None: lm-eval's own hub tasks). ``limit`` is passed
    only for hub tasks (offline items are already cut, stratified, by ``--limit``).
    """
    if include_dir is not None:  # the offline tasks must never reach for the hub
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-task INFO lines drown the run's own log
    # Offline: index only our rendered tasks (indexing lm-eval's thousands of built-in YAMLs costs ~10 s).
    tm = TaskManager(include_path=str(include_dir), include_defaults=False) if include_dir else TaskManager()
    gen_kwargs = {"max_gen_toks": max_gen_toks} if (max_gen_toks and include_dir is None) else None
    out = simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=tm, log_samples=True,
        bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed, gen_kwargs=gen_kwargs, verbosity="WARNING")
    return out["samples"]


def sample_to_item(s: dict, bench: Benchmark, task: str = "") -> dict:
    """One lm-eval sample -> ``{id, prompt_hash, prediction, target, correct}`` (+ extra metrics)."""
    doc = s["doc"]
    prompt = s["arguments"][0][0]
    item = {"id": doc.get("item_id") or f"{task}/{s['doc_id']}", "prompt_hash": prompt_hash(prompt)}
    if len(s["arguments"]) > 1 and isinstance(s["filtered_resps"][0], (list, tuple)):
        lls = [r[0] for r in s["filtered_resps"]]  # multiple choice: one log-likelihood per choice
        item["prediction"] = int(max(range(len(lls)), key=lambda i: lls[i]))
        item["target"] = s["target"]
        item["loglikelihoods"] = [float(x) for x in lls]
    else:
        resp = s["filtered_resps"][0]
        item["prediction"] = resp[0] if isinstance(resp, (list, tuple)) else resp
        if bench.name == "math":  # what exact match compared: the normalised final answer
            from coloc_ray.evaluation.tasks.utils import math_answer

            item["prediction"] = math_answer(item["prediction"])
        item["target"] = s["target"]
        item["generation"] = s["resps"][0][0] if s.get("resps") else None
    item["correct"] = bool(s[bench.lm_metric])
    for extra in ("acc_norm",):
        if extra in s:
            item[extra] = bool(s[extra])
    for strat in ("subject", "lang", "type", "domain"):
        if strat in doc:
            item[strat] = doc[strat]
    return item


def samples_to_items(samples: dict[str, list[dict]], bench: Benchmark) -> list[dict]:
    """Flatten every task's samples (MMLU subjects, MGSM languages) keeping the benchmark's scored filter."""
    items = []
    for task in sorted(samples):
        for s in samples[task]:
            if s.get("filter", "none") != bench.lm_filter:
                continue
            item = sample_to_item(s, bench, task)
            item.setdefault("task", task)
            items.append(item)
    if not items:
        raise RuntimeError(f"lm-eval returned no samples for {bench.name} with filter {bench.lm_filter!r}")
    return items
