"""Scheduling efficiency of the study's Ray Tune layer: 8 control trials of fixed cost on the local Ray.

efficiency = sum of trial times / (makespan x concurrent slots). 1.0 means the slots never sat idle;
the gap is Tune's per-trial start-up (a fresh worker process per trial) and driver bookkeeping.
Trial cost is a sleep (fixed, independent of machine load), so the number measures the scheduler, not
the model. MLflow tracking is on by default (it is part of each trial's real overhead); --no-tracking
isolates Tune.

    .venv/bin/python bench/bench_scheduling.py --trial-s 20 --slots 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _sleep_finetune(cfg: dict, out: Path) -> dict:
    time.sleep(cfg["bench_trial_s"])
    out.mkdir(parents=True, exist_ok=True)
    return {"steps": cfg["max_steps"]}


def _no_eval(cfg: dict, out: Path, tracker) -> dict:
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--trial-s", type=float, default=20.0, help="fixed cost of one trial (sleep)")
    ap.add_argument("--slots", type=int, default=2, help="max_concurrent_trials")
    ap.add_argument("--no-tracking", action="store_true")
    args = ap.parse_args()

    from ray import cloudpickle

    from coloc_ray.ablation.progress import ProgressBoard
    from coloc_ray.ablation.trial import Stages, eval_config_dict, finetune_config_dict
    from coloc_ray.ablation.tune_trials import run_trials
    from coloc_ray.ablation.study_config import StudyConfig
    from coloc_ray.raycluster import ensure_ray, shutdown_ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tmp = Path(tempfile.mkdtemp(prefix="bench-sched-"))
    cfg = StudyConfig.model_validate({
        "name": "bench", "model": "tiny-gqa", "arms": ["D"], "control_seeds": args.trials,
        "layer_sets": {"k": 2}, "max_concurrent_trials": args.slots, "tracking_uri": f"sqlite:///{tmp}/mlruns.db",
        "training": {"max_steps": 1, "extra": {"bench_trial_s": args.trial_s}}})
    study = cfg.resolved()
    specs = [{"trial_id": f"D-c{s}-t0", "arm": "D", "control_seed": s, "train_seed": 0, "lora_layers": [0, 1],
              "garfa_layers": [0, 1], "config_hash": "bench"} for s in cfg.control_seed_list]
    stages = Stages(None, None, None, None, finetune_config_dict, _sleep_finetune, eval_config_dict, _no_eval, None)
    ensure_ray(num_cpus=args.slots)
    parent = None
    if not args.no_tracking:
        from coloc_ray.tracking import Tracker

        parent = Tracker(cfg.tracking_uri, cfg.experiment_name, run_name="bench").start()
    ctx = {"study": study, "study_dir": str(tmp), "tracking_uri": cfg.tracking_uri, "experiment": cfg.experiment_name,
           "parent_run_id": parent.run_id if parent else None, "gpus": 0, "threads": 1,
           "tracking": not args.no_tracking}
    board = ProgressBoard(tmp, specs, 1, args.slots, echo=False)
    t0 = time.time()
    status = run_trials(specs, ctx, stages, board=board, storage_path=tmp / "tune", name="bench",
                        max_concurrent=args.slots, max_failures=0)
    makespan = time.time() - t0
    shutdown_ray()
    walls = [json.loads((tmp / "trials" / s["trial_id"] / "result.json").read_text())["wall_s"] for s in specs]
    out = {"trials": args.trials, "trial_s": args.trial_s, "slots": args.slots, "tracking": not args.no_tracking,
           "all_done": all(v == "DONE" for v in status.values()), "sum_trial_s": round(sum(walls), 1),
           "makespan_s": round(makespan, 1), "ideal_makespan_s": round(args.trials * args.trial_s / args.slots, 1),
           "efficiency": round(sum(walls) / (makespan * args.slots), 3)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
