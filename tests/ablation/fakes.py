"""Fast stand-in stages for the spine tests, with the real stages' signatures (module-level: Tune pickles them).

Knobs: :data:`KNOBS`, set by a test before its study starts (this module is pickled by value, so trial processes
get the values of that moment), or, for a study run in a subprocess (the CLI tests), environment variables
``COLOC_FAKE_<KNOB>`` set before it starts (its Ray workers inherit them). ``sleep`` (seconds) is the fine-tune's
cost; every fine-tune appends ``<trial> <start> <end> <status>`` to the file ``calls`` (independent of the
spine's own bookkeeping); ``fail_once`` names a trial whose first fine-tune raises (to exercise retries).
Driver-side stages count their calls in ``DRIVER_CALLS``. The trials build the real FinetuneConfig / EvalConfig
(``trial.finetune_config``), so these fakes receive validated configs as the real stages do.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from coloc_ray.ablation.stages import Stages

NUM_LAYERS = 4  # tiny-gqa
DRIVER_CALLS: Counter = Counter()
KNOBS: dict = {}


def knob(name: str, default=None):
    return KNOBS.get(name, os.environ.get(f"COLOC_FAKE_{name.upper()}", default))


def sensitivity(model, *, pairs, pooling, sink_multiple, top_k, num_workers) -> dict:
    DRIVER_CALLS["sensitivity"] += 1
    scores = [0.1 * (i + 1) for i in range(NUM_LAYERS)]  # rises with depth, like the paper
    return {"model": model.spec, "num_layers": NUM_LAYERS, "scores": scores, "top_k": top_k}


def rope_influence(model, *, eval_data, factors, layers, max_len, num_texts, num_workers) -> dict:
    scores = [1.0 / (i + 1) for i in range(NUM_LAYERS)]  # largest early
    return {"model": model.spec, "num_layers": NUM_LAYERS, "factors": list(factors), "scores": scores}


def analysis(sens: dict, rope: dict, top_k: int, out: Path, *, tracker, n_perm: int) -> dict:
    from scipy.stats import spearmanr

    DRIVER_CALLS["analysis"] += 1

    r, p = spearmanr(sens["scores"], rope["scores"])
    rec = {"spearman_r": float(r), "spearman_p": float(p), "num_layers": sens["num_layers"]}
    (out / "analysis.json").write_text(json.dumps(rec))
    return rec


def finetune(cfg, out: Path) -> dict:
    start = time.time()
    fail, calls = knob("fail_once"), knob("calls")
    marker = Path(str(calls) + ".failed")
    if fail and cfg.run_name.startswith(fail + "/") and not marker.exists():
        marker.write_text("x")
        _log_call(cfg, start, "FAILED")
        raise RuntimeError("injected failure")
    time.sleep(float(knob("sleep", 0)))
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"steps": cfg.max_steps, "final_train_loss": 1.0 / (1 + len(cfg.lora_layers))}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "adapter_config.json").write_text(json.dumps({"layers": cfg.lora_layers}))
    _log_call(cfg, start, "OK")
    return metrics


def _log_call(cfg, start: float, status: str) -> None:
    if knob("calls"):
        with open(knob("calls"), "a") as f:
            f.write(f"{cfg.run_name.split('/')[0]} {start:.3f} {time.time():.3f} {status}\n")


def read_calls(path) -> list[tuple[str, float, float, str]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [(a, float(b), float(c), d) for a, b, c, d in (line.split() for line in p.read_text().splitlines())]


def evaluate(cfg, out: Path, tracker) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "items").mkdir(exist_ok=True)
    res = {}
    for b in cfg.benchmarks:
        score = 0.5 if cfg.adapter is None else 0.6
        (out / "items" / f"{b}.jsonl").write_text(json.dumps({"id": "1", "correct": True}) + "\n")
        res[b] = {"score": score, "ci_low": 0.0, "ci_high": 1.0, "n": cfg.limit or 1, "metric": "acc"}
    (out / "eval.json").write_text(json.dumps(res))
    return res


def report(study_dir: Path) -> dict:
    DRIVER_CALLS["report"] += 1
    rows = [json.loads(p.read_text()) for p in sorted(Path(study_dir).glob("trials/*/result.json"))]
    out = Path(study_dir) / "report"
    out.mkdir(exist_ok=True)
    res = {"trials": [r["trial_id"] for r in rows]}
    (out / "results.json").write_text(json.dumps(res))
    (out / "report.md").write_text("\n".join(res["trials"]))
    return res


def stages() -> Stages:
    return Stages(sensitivity=sensitivity, rope_influence=rope_influence, analysis=analysis, finetune=finetune,
                  evaluate=evaluate, report=report)


def run_cli() -> None:
    """``python -m tests.ablation.fakes <coloc args>``: the real ``coloc`` command on these stages (CLI tests)."""
    import sys

    from coloc_ray.cli import main

    sys.exit(main(sys.argv[1:], stages=stages()))  # run as __main__: pickled by value (workers cannot import tests)


if __name__ == "__main__":
    run_cli()
