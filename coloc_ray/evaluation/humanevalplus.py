"""HumanEval+ through EvalPlus: greedy batched generation by the (patched) model, EvalPlus's sanitizer,
and EvalPlus's sandboxed executor in a subprocess. pass@1 = base and plus tests both pass.

Prompt: what EvalPlus's own codegen does. A tokenizer with a chat template (SmolLM2-Instruct, Llama-Instruct)
gets EvalPlus's instruct prompt (``make_raw_chat_prompt``: "Please provide a self-contained Python script ..."
with the response opened as a ```python block) and the stop string "\\n```\\n"; a model without one gets the
plain HumanEval prompt as a completion, with EvalPlus's completion stop strings. ``prompt_style`` overrides.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

from coloc_ray.io import shared_data_dir

log = logging.getLogger(__name__)

# The exact prefixes of evalplus/codegen.py (run_codegen, non-"perf" mode).
INSTRUCTION_PREFIX = ("Please provide a self-contained Python script that solves the following problem "
                      "in a markdown code block:")
RESPONSE_PREFIX = ("Below is a Python script with a self-contained function that solves the problem and "
                   "passes corresponding tests:")


def resolve_style(tokenizer, style: str = "auto") -> str:
    """``chat`` if the tokenizer has a chat template (EvalPlus's rule), else ``completion``."""
    if style != "auto":
        return style
    return "chat" if getattr(tokenizer, "chat_template", None) else "completion"


def build_prompt(task_prompt: str, tokenizer, style: str) -> str:
    """The prompt EvalPlus's codegen would send for this task (``task["prompt"].strip() + "\\n"``)."""
    from evalplus.provider.utility import make_raw_chat_prompt

    prompt = task_prompt.strip() + "\n"
    if style == "completion":
        return prompt
    return make_raw_chat_prompt(prompt, INSTRUCTION_PREFIX, RESPONSE_PREFIX, tokenizer)


def stop_strings(style: str) -> list[str]:
    from evalplus.provider.utility import EOS, extra_eos_for_direct_completion

    extra = extra_eos_for_direct_completion("humaneval") if style == "completion" else ["\n```\n"]
    return list(EOS) + extra


def truncate_at_stop(text: str, stops: list[str]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=len(text))
    return text[:cut]


def generate_hf(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
                stop: list[str], new_tokens: list | None = None) -> list[str]:
    """Greedy generation in batches (left padding), each output cut at its first stop string.

    ``new_tokens`` (a list) collects each output's generated-token count (padding and post-EOS excluded)."""
    import torch

    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only batched generation needs the prompt flush right
    device = next(model.parameters()).device
    outs: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            with torch.inference_mode():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     stop_strings=stop, tokenizer=tokenizer,
                                     pad_token_id=tokenizer.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            if new_tokens is not None:
                new_tokens.extend(_generated_len(row, tokenizer) for row in new.tolist())
            outs += [truncate_at_stop(t, stop) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = old_side
    return outs


def _generated_len(row: list[int], tokenizer) -> int:
    """Tokens one sequence of a batch really generated: up to and including its first EOS (the rest is pad)."""
    eos = tokenizer.eos_token_id
    return row.index(eos) + 1 if eos in row else len(row)


def sanitize_solution(task: dict, prompt: str, output: str, style: str) -> str:
    """EvalPlus's sanitizer over what its codegen would save (prompt + completion, or the chat answer)."""
    from evalplus.sanitize import sanitize

    solution = prompt + output if style == "completion" else output
    return sanitize(solution, entrypoint=task["entry_point"])


def evalplus_env(workdir: str) -> dict[str, str]:
    """The sandboxed worker's WHOLE environment (nothing of the user's: no tokens, keys or proxies).

    EvalPlus reads these at import: the local HumanEval+ file (copied into the work dir; gz is fine, its
    stream_jsonl checks the suffix) and a private cache, so nothing is fetched or written elsewhere.
    """
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
            "HUMANEVAL_OVERRIDE_PATH": str(Path(workdir) / HUMANEVAL_FILE),
            "XDG_CACHE_HOME": str(Path(workdir) / "xdg"), "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


HUMANEVAL_FILE = "HumanEvalPlus.jsonl.gz"


def score_solutions(solutions: dict[str, str], n_workers: int = 2, timeout_s: float | None = None) -> dict:
    """Run EvalPlus's executor on ``{task_id: code}`` in the sandbox; ``{task_id: {base, plus, passed}}``.

    The generated code runs in an isolated child (coloc_ray/evaluation/sandbox.py: no network, no user files,
    uid nobody, scrubbed environment, limits); a key may carry a ``#suffix`` to score several solutions of
    one task. Raises RuntimeError if the worker fails (``COLOC_SANDBOX=strict``: also if a layer is missing).
    """
    import shutil

    from coloc_ray.evaluation import evalplus_worker, sandbox

    data = shared_data_dir() / "humanevalplus" / HUMANEVAL_FILE
    with tempfile.TemporaryDirectory(prefix="coloc-evalplus-") as d:
        shutil.copyfile(data, Path(d) / HUMANEVAL_FILE)
        shutil.copyfile(evalplus_worker.__file__, Path(d) / "evalplus_worker.py")
        (Path(d) / "request.json").write_text(json.dumps({"solutions": solutions, "n_workers": n_workers}))
        # EvalPlus caps one solution at 60 s per test set (base, plus); beyond that the child is stuck.
        limit = timeout_s or 120 + 130 * len(solutions) / max(1, n_workers)
        spec = sandbox.build_spec([sys.executable, "-I", "-B", "evalplus_worker.py", "request.json", "result.json"],
                                  d, evalplus_env(d), hide=[str(shared_data_dir())])
        rc, _, err, _ = sandbox.run_sandboxed(spec, limit, log=log)
        res = Path(d) / "result.json"
        if rc != 0 or not res.is_file():
            raise RuntimeError(f"EvalPlus scoring subprocess failed (rc {rc}):\n{err[-3000:]}")
        return json.loads(res.read_text())


def run_humanevalplus(model, tokenizer, tasks: list[dict], *, max_new_tokens: int, batch_size: int,
                      style: str = "auto", backend: str = "hf", model_dir: str | None = None,
                      adapter_dir: str | None = None, n_workers: int = 2, engine=None,
                      max_length: int = 4096, new_tokens: list | None = None) -> list[dict]:
    """Generate, sanitize and score ``tasks`` (HumanEval+ records); one per-item row per task.

    ``engine``: the evaluation's running vLLM engine (:class:`coloc_ray.evaluation.engine.Engine`), which then
    generates (tokenized and decoded here exactly as on the HF path); ``new_tokens`` collects token counts.

    Row: ``{id, prompt_hash, prediction (the sanitized solution), target ("pass": base and plus tests),
    correct, base, plus, generation}``.
    """
    from coloc_ray.evaluation.harness import prompt_hash

    style = resolve_style(tokenizer, style)
    prompts = [build_prompt(t["prompt"], tokenizer, style) for t in tasks]
    stop = stop_strings(style)
    if engine is not None:
        from coloc_ray.evaluation.harness import generate_on_engine

        outs = [truncate_at_stop(o, stop) for o in
                generate_on_engine(engine, tokenizer, prompts, max_new_tokens, stop, max_length, new_tokens)]
    elif backend == "vllm":
        from coloc_ray.evaluation.vllm_backend import generate_vllm

        outs = [truncate_at_stop(o, stop) for o in
                generate_vllm(model_dir, prompts, max_new_tokens, adapter_dir=adapter_dir, stop=stop)]
    else:
        outs = generate_hf(model, tokenizer, prompts, max_new_tokens, batch_size, stop, new_tokens)
    solutions = {t["task_id"]: sanitize_solution(t, p, o, style) for t, p, o in zip(tasks, prompts, outs)}
    scores = score_solutions(solutions, n_workers=n_workers)
    return [{"id": t["task_id"], "prompt_hash": prompt_hash(p), "prediction": solutions[t["task_id"]],
             "target": "pass", "correct": bool(scores[t["task_id"]]["passed"]),
             "base": scores[t["task_id"]]["base"], "plus": scores[t["task_id"]]["plus"], "generation": o,
             "prompt_style": style}
            for t, p, o in zip(tasks, prompts, outs)]
