"""Fast stand-in stages for the spine tests (module-level: Tune pickles them to trial workers).

Knobs come through the study's ``training.extra`` (it reaches the fine-tune config; Ray workers do not see
environment variables set after Ray started): ``fake_sleep`` (seconds) is the fine-tune's cost; every
fine-tune appends ``<run name> <start> <end>`` to the file ``fake_calls`` (independent of the spine's own
bookkeeping); ``fake_fail_once`` names a trial whose first fine-tune raises (to exercise retries).
Driver-side stages count their calls in ``DRIVER_CALLS``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from coloc_ray.ablation.trial import Stages, eval_config_dict, finetune_config_dict

NUM_LAYERS = 4  # tiny-gqa
DRIVER_CALLS: Counter = Counter()


def sensitivity(study: dict) -> dict:
    DRIVER_CALLS["sensitivity"] += 1
    scores = [0.1 * (i + 1) for i in range(NUM_LAYERS)]  # rises with depth, like the paper
    return {"model": study["model"], "num_layers": NUM_LAYERS, "scores": scores, "top_k": study["layer_sets"]["k"]}


def rope_influence(study: dict) -> dict:
    scores = [1.0 / (i + 1) for i in range(NUM_LAYERS)]  # largest early
    return {"model": study["model"], "num_layers": NUM_LAYERS, "factors": study["probes"]["factors"],
            "scores": scores}


def analysis(sens: dict, rope: dict, study: dict, out: Path, tracker) -> dict:
    from scipy.stats import spearmanr

    DRIVER_CALLS["analysis"] += 1

    r, p = spearmanr(sens["scores"], rope["scores"])
    rec = {"spearman_r": float(r), "spearman_p": float(p), "num_layers": sens["num_layers"]}
    (out / "analysis.json").write_text(json.dumps(rec))
    return rec


def top_k_layers(scores: list, k: int) -> list:
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


def finetune(cfg: dict, out: Path) -> dict:
    start = time.time()
    fail = cfg.get("fake_fail_once")
    marker = Path(str(cfg.get("fake_calls")) + ".failed")
    if fail and cfg["run_name"].startswith(fail + "/") and not marker.exists():
        marker.write_text("x")
        _log_call(cfg, start, "FAILED")
        raise RuntimeError("injected failure")
    time.sleep(float(cfg.get("fake_sleep", 0)))
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"steps": cfg["max_steps"], "final_train_loss": 1.0 / (1 + len(cfg["lora_layers"]))}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "adapter_config.json").write_text(json.dumps({"layers": cfg["lora_layers"]}))
    _log_call(cfg, start, "OK")
    return metrics


def _log_call(cfg: dict, start: float, status: str) -> None:
    if cfg.get("fake_calls"):
        with open(cfg["fake_calls"], "a") as f:
            f.write(f"{cfg['run_name'].split('/')[0]} {start:.3f} {time.time():.3f} {status}\n")


def read_calls(path) -> list[tuple[str, float, float, str]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [(a, float(b), float(c), d) for a, b, c, d in (line.split() for line in p.read_text().splitlines())]


def evaluate(cfg: dict, out: Path, tracker) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "items").mkdir(exist_ok=True)
    res = {}
    for b in cfg["benchmarks"]:
        score = 0.5 if cfg["adapter"] is None else 0.6
        (out / "items" / f"{b}.jsonl").write_text(json.dumps({"id": "1", "correct": True}) + "\n")
        res[b] = {"score": score, "ci_low": 0.0, "ci_high": 1.0, "n": cfg["limit"] or 1, "metric": "acc"}
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
    return Stages(sensitivity, rope_influence, analysis, top_k_layers, finetune_config_dict, finetune,
                  eval_config_dict, evaluate, report)
