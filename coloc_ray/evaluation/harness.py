"""Run lm-eval tasks on an already-loaded model (so LoRA and GARFA are in the forward) and keep every item.

The model goes in through ``HFLM(pretrained=model, tokenizer=tok, ...)``; per-item results come from
lm-eval's own ``log_samples`` records, one row per item: ``{id, prompt_hash, prediction, target, correct}``.
"""

from __future__ import annotations

import hashlib
import json
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


def run_tasks(lm, tasks: list, *, include_dir: Path | None, num_fewshot: int | None, limit: int | None,
              seed: int, max_gen_toks: int | None = None, samples: dict[str, list[int]] | None = None,
              task_manager=None) -> dict[str, list[dict]]:
    """``lm_eval.simple_evaluate`` over ``tasks``; returns lm-eval's logged samples per task name.

    ``include_dir`` is the rendered offline task dir (None: lm-eval's own hub tasks, see :func:`run_hub`).
    ``tasks`` are names or lm-eval Task objects. ``samples`` ({task: sorted doc indices}) is lm-eval's own
    way to score chosen items; ``limit`` (lm-eval's per-task cut) is kept for callers that want it.
    """
    if include_dir is not None:  # the offline tasks must never reach for the hub
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-task INFO lines drown the run's own log
    # Offline: index only our rendered tasks (indexing lm-eval's thousands of built-in YAMLs costs ~10 s).
    tm = task_manager or (TaskManager(include_path=str(include_dir), include_defaults=False) if include_dir
                          else TaskManager())
    gen_kwargs = {"max_gen_toks": max_gen_toks} if (max_gen_toks and include_dir is None) else None
    out = simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, samples=samples, task_manager=tm,
        log_samples=True, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed, gen_kwargs=gen_kwargs, verbosity="WARNING")
    return out["samples"]


# --- --source hub: lm-eval's standard tasks, --limit meaning "about N items per benchmark" ---------------------

def hub_task_manager():
    """lm-eval's index of its installed tasks: where ``--source hub`` finds its task names."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def hub_selection(tasks: dict, limit: int | None, seed: int,
                  doc_field: str | None = None) -> dict[str, list[int]] | None:
    """About ``limit`` doc indices in total over lm-eval's leaf ``tasks`` ({name: Task}), as offline cuts.

    lm-eval's own ``limit`` is per leaf task (MMLU's 57 subjects would get 57 x N items, MGSM's 11 languages
    11 x N), so hub mode picks the items itself with :func:`coloc_ray.evaluation.data.stratified_limit`, the
    offline cut: strata are the leaf tasks (MMLU subjects, MATH types, MGSM languages), within a single task
    the doc field ``doc_field`` (GPQA's domain), visited round-robin in an order seeded by the evaluation seed,
    so every arm and the base model score the same items. Returns {task: sorted indices into the task's
    ``eval_docs``}, without tasks that got none; None when ``limit`` is None or covers every item.
    """
    from coloc_ray.evaluation.data import stratified_limit

    records = []
    for name in sorted(tasks):
        docs = tasks[name].eval_docs
        cols = getattr(docs, "column_names", None) or []  # a datasets.Dataset column: no per-doc processing
        field = docs[doc_field] if doc_field in cols else [""] * len(docs)
        records.extend({"task": name, "i": i, "stratum": f"{name}|{f}"} for i, f in enumerate(field))
    if limit is None or limit >= len(records):
        return None
    out: dict[str, list[int]] = {}
    for r in stratified_limit(records, limit, "stratum", seed):
        out.setdefault(r["task"], []).append(r["i"])
    return {t: sorted(idx) for t, idx in out.items()}


def run_hub(lm, bench: Benchmark, *, limit: int | None, seed: int,
            max_gen_toks: int | None = None) -> dict[str, list[dict]]:
    """Run ``bench``'s standard lm-eval task on about ``limit`` items in all; lm-eval's samples per task.

    The leaf tasks are loaded once, the items chosen by :func:`hub_selection` and handed to
    ``simple_evaluate`` as its ``samples`` argument. A task that got no item is left out of the run (lm-eval
    reads an empty index list as "every item"). Fails if lm-eval scored other items than were chosen.
    """
    tm = hub_task_manager()
    tasks = tm.load([bench.hub_task])["tasks"]
    picks = hub_selection(tasks, limit, seed, bench.hub_stratum)
    names = sorted(tasks) if picks is None else sorted(picks)
    samples = run_tasks(lm, [tasks[n] for n in names], include_dir=None, num_fewshot=bench.shots, limit=None,
                        seed=seed, max_gen_toks=max_gen_toks, samples=picks, task_manager=tm)
    for n in names:
        want = set(range(len(tasks[n].eval_docs))) if picks is None else set(picks[n])
        got = {s["doc_id"] for s in samples.get(n, [])}
        if got != want:
            raise RuntimeError(f"lm-eval scored {len(got)} items of {n}, not the {len(want)} chosen")
    return samples


def items_per_task(rows: list[dict]) -> dict[str, int]:
    """How many items each lm-eval task scored (eval.json ``items_per_task``)."""
    out: dict[str, int] = {}
    for r in rows:
        key = r.get("task") or "all"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def _text(s: dict) -> str:
    """The scored (filtered) text of a generative sample."""
    resp = s["filtered_resps"][0]
    return resp[0] if isinstance(resp, (list, tuple)) else resp


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
        item["prediction"] = _text(s)
        item["target"] = s["target"]
        item["generation"] = s["resps"][0][0] if s.get("resps") else None
    item["correct"] = bool(s[bench.lm_metric])
    if bench.rescore is not None:  # the benchmark's own scoring of a sample (registry.Benchmark.rescore)
        bench.rescore(item, doc, _text(s))
    for extra in ("acc_norm",):
        if extra in s:
            item[extra] = bool(s[extra])
    for strat in ("subject", "lang", "type", "domain"):
        if strat in doc:
            item[strat] = doc[strat]
    return item


def samples_to_items(samples: dict[str, list[dict]], bench: Benchmark) -> list[dict]:
    """Flatten every task's samples (MMLU subjects, MGSM languages) keeping the benchmark's scored filter."""
    items, cases = [], []
    for task in sorted(samples):
        for s in samples[task]:
            if s.get("filter", "none") != bench.lm_filter:
                continue
            item = sample_to_item(s, bench, task)
            item.setdefault("task", task)
            items.append(item)
            if bench.item_extras is not None:
                cases.append({"doc": s["doc"], "generation": _text(s), "prediction": item["prediction"]})
    if not items:
        raise RuntimeError(f"lm-eval returned no samples for {bench.name} with filter {bench.lm_filter!r}")
    if cases:  # further per-item columns, one batch (MATH: lm-eval's equivalence checks; may use a child process)
        for item, extra in zip(items, bench.item_extras(cases)):
            item.update(extra)
    return items


def make_engine_lm(engine, tokenizer, max_length: int, new_tokens: list | None = None):
    """An lm-eval model whose requests go to the evaluation's vLLM engine (see :mod:`.engine`).

    Tokenization, stop handling and the decoded text follow lm-eval's HFLM exactly (same tokenizer, no special
    tokens, context left-truncated to ``max_length - max_gen_toks``, text cut at the first stop string), so
    the two backends differ only in the forward pass. ``new_tokens`` (a list) collects each generation's
    token count, for the cost record.
    """
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

    class EngineLM(TemplateLM):
        @property
        def eot_token_id(self) -> int:
            return tokenizer.eos_token_id

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw) -> list[int]:
            return tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw):
            pairs = []
            for _, ctx, cont in requests:  # HFLM's truncation: the last max_length + 1 tokens
                whole = (ctx + cont)[-(max_length + 1):]
                pairs.append([whole[:len(whole) - len(cont)], cont])
            res = engine.call("loglikelihood", pairs=pairs)["results"]
            for (key, _, _), (lp, greedy) in zip(requests, res):
                self.cache_hook.add_partial("loglikelihood", key, (lp, greedy))
            return [(float(lp), bool(g)) for lp, g in res]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError("rolling log-likelihood is not used by coloc's benchmarks")

        def generate_until(self, requests, disable_tqdm: bool = False):
            eos = tokenizer.decode([tokenizer.eos_token_id], skip_special_tokens=False)
            groups: dict[str, list[int]] = {}
            for i, r in enumerate(requests):  # one engine call per distinct (stop strings, budget)
                groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
            out: list[str | None] = [None] * len(requests)
            for key, idx in groups.items():
                kwargs = normalize_gen_kwargs(dict(requests[idx[0]].args[1]), 256)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                budget = int(kwargs.pop("max_gen_toks"))
                texts = generate_on_engine(engine, tokenizer, [requests[i].args[0] for i in idx], budget, until,
                                           max_length, new_tokens)
                for i, text in zip(idx, texts):
                    out[i] = postprocess_generated_text(generation=text, stop=until, think_end_token=None)
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
            return out

    return EngineLM()


def generate_on_engine(engine, tokenizer, prompts: list[str], max_new_tokens: int, stop: list[str],
                       max_length: int, new_tokens: list | None = None) -> list[str]:
    """Greedy completions of ``prompts`` on the engine, decoded by ``tokenizer`` (HF's skip_special_tokens).

    Prompts are tokenized without special tokens and left-truncated to ``max_length - max_new_tokens``, as
    lm-eval's HFLM and the HF HumanEval+ path do. The text is not cut at ``stop`` here (callers do, as on HF).
    """
    room = max(1, max_length - max_new_tokens)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"][-room:] for p in prompts]
    res = engine.call("generate", prompts=ids, max_tokens=max_new_tokens, stop=[s for s in stop if s])
    if new_tokens is not None:
        new_tokens.extend(len(t) for t in res["token_ids"])
    return [tokenizer.decode(t, skip_special_tokens=True) for t in res["token_ids"]]
