"""A synthetic study folder on disk (the contract "Study" in docs/ARCHITECTURE.md), built per test."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

BENCHES = {"mmlu": 40, "humanevalplus": 20, "arc_challenge": 30}
P_CORRECT = {"base": 0.55, "A": 0.75, "B": 0.6, "C": 0.58, "D": 0.45}
CONTROL_SEEDS = [123, 124, 125]
TRAIN_SEEDS = [0, 1]
GPU_HOURS = 0.25
RATE = 2.5


def _items(arm, cs, ts):
    # Deterministic per (arm, seeds): the test recomputes everything from these files.
    rng = np.random.default_rng(zlib.crc32(repr((arm, cs, ts)).encode()))
    return {b: [{"id": f"{b}/{i}", "prompt_hash": f"h{i}", "prediction": "x", "target": "x",
                 "correct": bool(rng.random() < P_CORRECT[arm])} for i in range(n)] for b, n in BENCHES.items()}


def _write_eval(d: Path, items: dict) -> dict:
    (d / "items").mkdir(parents=True, exist_ok=True)
    ev = {}
    for b, rows in items.items():
        (d / "items" / f"{b}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        score = float(np.mean([r["correct"] for r in rows]))
        ev[b] = {"score": score, "ci_low": score - 0.1, "ci_high": score + 0.1, "n": len(rows),
                 "metric": "accuracy"}
    (d / "eval.json").write_text(json.dumps(ev))
    return ev


HELDOUT_RECORDS = 12
LOSS = {"A": 1.8, "B": 1.9, "C": 1.95, "D": 2.0}


def heldout_losses(arm, cs, ts):
    """Per-record held-out losses of one fine-tune (the same record ids for every arm)."""
    rng = np.random.default_rng(zlib.crc32(repr(("loss", arm, cs, ts)).encode()))
    return {f"rec{i}": float(LOSS[arm] + rng.normal(0, 0.2)) for i in range(HELDOUT_RECORDS)}


def base_losses():
    """The held-out records' losses under the base model (a fine-tune's step 0): the same for every trial."""
    rng = np.random.default_rng(99)
    return {f"rec{i}": float(2.1 + rng.normal(0, 0.2)) for i in range(HELDOUT_RECORDS)}


def trial_id(arm, cs, ts):
    return f"{arm}-c{cs}-t{ts}" if cs is not None else f"{arm}-t{ts}"


def build_study(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.json").write_text(json.dumps({"name": "synthetic", "model": "tiny-gqa",
                                                  "layer_sets": {"k": 3}, "cost_per_gpu_hour": RATE}))
    base_dir = root / "base"
    ev = _write_eval(base_dir / "eval", _items("base", None, None))
    (base_dir / "result.json").write_text(json.dumps({
        "trial_id": "base", "arm": "base", "control_seed": None, "train_seed": 0, "eval": ev,
        "items_dir": str(base_dir / "eval" / "items"), "wall_s": 60.0, "gpu_hours": 0.0}))
    for arm in ("A", "B", "C", "D"):
        for ts in TRAIN_SEEDS:
            for cs in ([None] if arm == "A" else CONTROL_SEEDS):
                tdir = root / "trials" / trial_id(arm, cs, ts)
                ev = _write_eval(tdir / "eval", _items(arm, cs, ts))
                (tdir / "result.json").write_text(json.dumps({
                    "trial_id": trial_id(arm, cs, ts), "arm": arm, "control_seed": cs, "train_seed": ts,
                    "lora_layers": [0, 1, 2], "garfa_layers": [0, 1, 2], "eval": ev,
                    "finetune": {"steps": 3, "final_eval_loss": LOSS[arm],
                                 "heldout_record_losses": heldout_losses(arm, cs, ts),
                                 "heldout_record_losses_step0": base_losses()},
                    "items_dir": str(tdir / "eval" / "items"), "wall_s": 900.0, "gpu_hours": GPU_HOURS,
                    "mlflow_run_id": None}))
    rng = np.random.default_rng(0)
    depth = np.arange(8.0)
    (root / "probes").mkdir()
    per_pair = {f"{d}{j}": (depth + rng.normal(0, 1, 8)).tolist() for d in ("code", "math") for j in range(3)}
    domains = {pid: pid[:-1] for pid in per_pair}
    scores = np.mean([np.mean([per_pair[p] for p in per_pair if domains[p] == d], axis=0) for d in ("code", "math")],
                     axis=0)
    (root / "probes" / "sensitivity.json").write_text(json.dumps(
        {"model": "tiny-gqa", "num_layers": 8, "top_k": 3, "scores": scores.tolist(), "per_pair": per_pair,
         "pair_domains": domains}))
    (root / "probes" / "rope_influence.json").write_text(json.dumps(
        {"model": "tiny-gqa", "num_layers": 8, "scores": (-depth + rng.normal(0, 1, 8)).tolist()}))
    return root


@pytest.fixture()
def study(tmp_path):
    return build_study(tmp_path / "study")
