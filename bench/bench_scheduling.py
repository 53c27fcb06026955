"""Scheduling efficiency of the study's Ray Tune layer: 8 control trials on the local Ray.

efficiency = sum of trial times / (makespan x concurrent slots). 1.0 means the slots never sat idle;
the gap is Tune's per-trial start-up, the idle time between trials and driver bookkeeping.

Two kinds of trial:
- ``--mode sleep`` (default): a trial's work is a fixed sleep (independent of machine load), so the number
  measures the scheduler and the per-trial bookkeeping (MLflow run, result record), not the model.
  ``useful_efficiency`` = trials x trial_s / (makespan x slots) also counts the bookkeeping as waste.
- ``--mode real``: real arm-D control trials of the tiny test study (random 4-layer GQA Llama): a Ray Train
  fine-tune (1 worker) then a ``--limit``ed evaluation, exactly the path ``coloc run`` takes.

MLflow tracking is on by default (it is part of each trial's real overhead); --no-tracking isolates Tune.

    .venv/bin/python bench/bench_scheduling.py --trial-s 20 --slots 2
    .venv/bin/python bench/bench_scheduling.py --mode real --slots 2
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


TRIAL_S = {"s": 20.0}  # sleep mode's cost of one fine-tune (set from --trial-s; pickled by value to the trials)


def _sleep_finetune(cfg, out: Path) -> dict:
    time.sleep(TRIAL_S["s"])
    out.mkdir(parents=True, exist_ok=True)
    return {"steps": cfg.max_steps}


def _no_eval(cfg, out: Path, tracker) -> dict:
    return {}


def _unused(*a, **kw):
    raise AssertionError("not a trial stage")


def _study(args, tmp: Path):
    """The StudyConfig of the benchmark: arm D only, ``--trials`` control seeds."""
    import yaml

    from coloc_ray.ablation.study_config import StudyConfig

    common = {"arms": ["D"], "control_seeds": args.trials, "train_seeds": [0], "max_concurrent_trials": args.slots,
              "tracking_uri": f"sqlite:///{tmp}/mlruns.db", "name": f"bench-{args.mode}"}
    if args.mode == "sleep":
        return StudyConfig.model_validate({**common, "model": "tiny-gqa", "layer_sets": {"k": 2},
                                           "training": {"max_steps": 1}})
    d = yaml.safe_load((ROOT / "studies" / "tiny_test.yaml").read_text())
    d.update(common)
    d["training"]["max_steps"] = args.steps
    return StudyConfig.model_validate(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("sleep", "real"), default="sleep")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--trial-s", type=float, default=20.0, help="sleep mode: fixed cost of one trial")
    ap.add_argument("--steps", type=int, default=4, help="real mode: fine-tune steps per trial")
    ap.add_argument("--slots", type=int, default=2, help="max_concurrent_trials")
    ap.add_argument("--no-tracking", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="bench-sched-"))
    if "RAY_AUTH_TOKEN_PATH" not in os.environ:  # a private token, never the user's ~/.ray/auth_token
        (tmp / "token").write_text(secrets.token_hex(32))
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp / "token"))

    from ray import cloudpickle

    from coloc_ray.ablation.progress import ProgressBoard
    from coloc_ray.ablation.stages import Stages, real_stages
    from coloc_ray.ablation.trial import TrialContext
    from coloc_ray.ablation.tune_trials import run_trials
    from coloc_ray.raycluster import ensure_ray, shutdown_ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = _study(args, tmp)
    specs = [{"trial_id": f"D-c{s}-t0", "arm": "D", "control_seed": s, "train_seed": 0, "lora_layers": [0, 1],
              "garfa_layers": [0, 1], "config_hash": "bench"} for s in cfg.control_seed_list]
    if args.mode == "sleep":
        TRIAL_S["s"] = args.trial_s
        stages = Stages(sensitivity=_unused, rope_influence=_unused, analysis=_unused, finetune=_sleep_finetune,
                        evaluate=_no_eval, report=_unused)
    else:
        stages = real_stages()
    ensure_ray(num_cpus=args.slots)
    parent = None
    if not args.no_tracking:
        from coloc_ray.tracking import Tracker

        parent = Tracker(cfg.tracking_uri, cfg.experiment_name, run_name="bench").start()
    ctx = TrialContext(study=cfg, storage=str(tmp), parent_run_id=parent.run_id if parent else None,
                       tracking=not args.no_tracking)
    board = ProgressBoard(tmp, specs, 1, args.slots, echo=False)
    t0 = time.time()
    status = run_trials(specs, ctx, stages, board=board, storage_path=tmp / "tune", name="bench",
                        max_concurrent=args.slots, max_failures=0)
    makespan = time.time() - t0
    shutdown_ray()
    if parent is not None:
        parent.end("FINISHED")
    bad = {k: v for k, v in status.items() if v != "DONE"}
    if bad:
        sys.exit(f"bench_scheduling: trials failed, no efficiency computed: {bad}")
    walls = [json.loads((tmp / "trials" / s["trial_id"] / "result.json").read_text())["wall_s"] for s in specs]
    out = {"mode": args.mode, "trials": args.trials, "slots": args.slots, "tracking": not args.no_tracking,
           "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "sum_trial_s": round(sum(walls), 1),
           "min_trial_s": round(min(walls), 1), "max_trial_s": round(max(walls), 1),
           "makespan_s": round(makespan, 1), "efficiency": round(sum(walls) / (makespan * args.slots), 3)}
    if args.mode == "sleep":
        out["trial_s"] = args.trial_s
        out["ideal_makespan_s"] = round(args.trials * args.trial_s / args.slots, 1)
        out["useful_efficiency"] = round(args.trials * args.trial_s / (makespan * args.slots), 3)
    else:
        out["steps"] = args.steps
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
