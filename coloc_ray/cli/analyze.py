"""``coloc analyze``: co-localization statistics of two probe outputs (METHOD 3)."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("analyze", help="co-localization statistics of sensitivity vs RoPE influence",
                       description="Reads sensitivity.json and rope_influence.json, writes "
                                   "DIR/analysis.json, DIR/profiles.png and DIR/rank_scatter.png, "
                                   "and logs one MLflow run.")
    p.add_argument("--sensitivity", required=True, metavar="FILE", help="sensitivity.json from `coloc probe`")
    p.add_argument("--rope", required=True, metavar="FILE", help="rope_influence.json from `coloc probe`")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="top-set size (default: the sensitivity file's top_k, else 10)")
    p.add_argument("--n-perm", type=int, default=10000, metavar="N", help="permutations for the permutation p")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the permutation null")
    p.add_argument("--tracking-uri", default=None, metavar="U", help="MLflow store (default ./mlruns.db)")
    p.add_argument("--experiment", default="coloc-ray", help="MLflow experiment name")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=_analyze)


def _analyze(args) -> int:
    from coloc_ray.analysis.run import load_probe, run_analysis
    from coloc_ray.tracking import Tracker

    # Both files are read and checked before anything is written or a run is created.
    sens = load_probe(args.sensitivity, "sensitivity")
    rope = load_probe(args.rope, "rope influence")
    tracker = Tracker(args.tracking_uri, experiment=args.experiment, run_name="analysis",
                      tags={"stage": "analysis"}, enabled=not args.no_tracking)
    result = run_analysis(sens, rope, args.top_k, args.out, tracker=tracker, n_perm=args.n_perm,
                          seed=args.seed)
    summary = {k: result[k] for k in ("spearman_r", "spearman_p", "permutation_p", "overlap",
                                      "expected_overlap", "overlap_p", "partial_r", "partial_p",
                                      "depth_surrogate_p", "circular_shift_p")}
    summary["mlflow_run_id"] = tracker.run_id
    print(json.dumps(summary, indent=2))
    print(result["interpretation"])
    return 0
