"""Score HumanEval+ solutions with EvalPlus's own executor. Runs ONLY inside the sandbox (never imported by coloc).

    python -I -B evalplus_worker.py request.json result.json     (a copy of this file, in the sandbox work dir)

Standard library + EvalPlus only: the sandbox (``coloc_ray/evaluation/sandbox.py``) hides the checkout, so this
file is copied into the private work dir and run by path. ``request.json``: ``{"solutions": {key: code},
"n_workers": int}``; a key is a task id, optionally with a ``#suffix`` (several solutions of one task, as the
security tests use). The sandbox sets ``HUMANEVAL_OVERRIDE_PATH`` (a copy of the local HumanEval+ file) and
``XDG_CACHE_HOME`` (inside the work dir), which EvalPlus reads at import time. Each solution runs through
``evalplus.evaluate.check_correctness`` (base and plus inputs, EvalPlus's per-test time limits, its
``reliability_guard``); on top of that guard, the process that executes the solution gets ``RLIMIT_NPROC`` 0
(no new process or thread: the guard's ``os.fork = None`` is bypassed by ``posix.fork``) and a CPU-time cap.
"""

from __future__ import annotations

import hashlib
import json
import sys

LEAF_CPU_S = 150  # EvalPlus caps a task at 60 s wall per test set; this is the kernel's backstop


def _harden_leaf() -> None:
    """Wrap EvalPlus's reliability_guard (called in the forked process right before ``exec(code)``)."""
    import resource

    import evalplus.eval as ev

    original = ev.reliability_guard

    def guard(*args, **kwargs):
        resource.setrlimit(resource.RLIMIT_CPU, (LEAF_CPU_S, LEAF_CPU_S))
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # checked at fork/clone for a non-root uid
        return original(*args, **kwargs)

    ev.reliability_guard = guard


def _score(solutions: dict[str, str], n_workers: int) -> dict[str, dict]:
    from concurrent.futures import ProcessPoolExecutor

    from evalplus.data import get_human_eval_plus, get_human_eval_plus_hash
    from evalplus.evaluate import check_correctness, get_groundtruth

    problems = get_human_eval_plus()
    task_of = {k: k.split("#")[0] for k in solutions}
    unknown = sorted(set(task_of.values()) - set(problems))
    if unknown:
        raise SystemExit(f"unknown HumanEval+ task ids: {unknown[:5]}")
    subset = {t: problems[t] for t in sorted(set(task_of.values()))}
    # Ground truth (expected outputs and reference times) of just these problems, from their canonical code.
    key = hashlib.sha256("\n".join(sorted(subset)).encode()).hexdigest()[:16]
    truth = get_groundtruth(subset, f"{get_human_eval_plus_hash()}-{key}", [])
    _harden_leaf()
    out = {}
    with ProcessPoolExecutor(max_workers=n_workers) as pool:
        futures = {k: pool.submit(check_correctness, "humaneval", i, subset[task_of[k]], code,
                                  truth[task_of[k]], False, True)
                   for i, (k, code) in enumerate(solutions.items())}
        for k, fut in futures.items():
            r = fut.result()
            base, plus = r["base"][0], r["plus"][0]
            out[k] = {"base": base, "plus": plus, "passed": base == "pass" and plus == "pass"}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        req = json.load(f)
    res = _score(req["solutions"], int(req.get("n_workers", 2)))
    with open(argv[1], "w") as f:
        json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
