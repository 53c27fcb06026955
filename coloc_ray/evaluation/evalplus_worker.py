"""Score HumanEval+ solutions with EvalPlus's own sandbox. Runs ONLY as a subprocess (never imported by coloc).

    python -m coloc_ray.evaluation.evalplus_worker request.json result.json

``request.json``: ``{"solutions": {task_id: code}, "n_workers": int}``. The parent sets
``HUMANEVAL_OVERRIDE_PATH`` (the local HumanEval+ file) and ``XDG_CACHE_HOME`` (a temp dir) before starting
this process, because EvalPlus reads both at import time. Each solution runs through
``evalplus.evaluate.check_correctness`` (base and plus inputs, EvalPlus's per-test time limits, its
``reliability_guard``), so generated code never executes in the evaluating process.
"""

from __future__ import annotations

import hashlib
import json
import sys


def _score(solutions: dict[str, str], n_workers: int) -> dict[str, dict]:
    from concurrent.futures import ProcessPoolExecutor

    from evalplus.data import get_human_eval_plus, get_human_eval_plus_hash
    from evalplus.evaluate import check_correctness, get_groundtruth

    problems = get_human_eval_plus()
    unknown = sorted(set(solutions) - set(problems))
    if unknown:
        raise SystemExit(f"unknown HumanEval+ task ids: {unknown[:5]}")
    subset = {t: problems[t] for t in solutions}
    # Ground truth (expected outputs and reference times) of just these problems, from their canonical code.
    key = hashlib.sha256("\n".join(sorted(subset)).encode()).hexdigest()[:16]
    truth = get_groundtruth(subset, f"{get_human_eval_plus_hash()}-{key}", [])
    out = {}
    with ProcessPoolExecutor(max_workers=n_workers) as pool:
        futures = {t: pool.submit(check_correctness, "humaneval", i, subset[t], code, truth[t], False, True)
                   for i, (t, code) in enumerate(solutions.items())}
        for t, fut in futures.items():
            r = fut.result()
            base, plus = r["base"][0], r["plus"][0]
            out[t] = {"base": base, "plus": plus, "passed": base == "pass" and plus == "pass"}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    req = json.loads(open(argv[0]).read())
    res = _score(req["solutions"], int(req.get("n_workers", 2)))
    with open(argv[1], "w") as f:
        json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
