"""Loading a study's results from its storage folder for the report (contract "Study" in docs/ARCHITECTURE.md).

Tolerant by design: every missing or unreadable file becomes one line in ``problems`` and the
loaders return what they could read, so a partial study still gets a report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from coloc_ray.ablation import layout
from coloc_ray.analysis import ablation_stats as st
from coloc_ray.evaluation.registry import benchmark_names

BENCH_ORDER = tuple(benchmark_names())  # the registry's order (coloc_ray/evaluation/benchmarks/)
ARM_ORDER = ("A", "B", "C", "D")
#: The fine-tune's held-out loss as a metric beside the benchmarks (lower is better, not in the Avg).
HELDOUT = "heldout_loss"


def read_json_checked(path: Path, problems: list[str], what: str):
    if not path.is_file():
        problems.append(f"{what}: {path} is missing")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{what}: {path} is not valid JSON ({e})")
        return None


def read_items(path: Path) -> dict[str, float]:
    """``{item id: correct}`` of one ``<bench>.jsonl`` (``correct`` as 0/1 or a graded score)."""
    out = {}
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            row = json.loads(line)
            out[str(row.get("id", i))] = float(row["correct"])
    return out


def _load_items(dirs: list[Path], benches, who: str, problems: list[str]) -> dict:
    items_dir = next((d for d in dirs if d.is_dir()), None)
    if items_dir is None:
        problems.append(f"{who}: no per-item results (looked in {', '.join(map(str, dirs))}); "
                        "no paired CIs for it")
        return {}
    items = {}
    for bench in benches:
        f = items_dir / f"{bench}.jsonl"
        try:
            items[bench] = read_items(f)
        except FileNotFoundError:
            problems.append(f"{who}: per-item file {f} is missing")
        except (ValueError, KeyError) as e:
            problems.append(f"{who}: per-item file {f} is unreadable ({e!r})")
    return items


def _scores(ev, who: str, problems: list[str]) -> dict[str, float]:
    out = {}
    for bench, v in (ev or {}).items():
        if isinstance(v, dict) and isinstance(v.get("score"), (int, float)):
            out[bench] = float(v["score"])
        else:
            problems.append(f"{who}: benchmark {bench} has no numeric score")
    return out


def _per_record(ft: dict, key: str) -> dict[str, float] | None:
    per = ft.get(key)
    if not isinstance(per, dict) or not per:
        return None
    try:
        vals = {str(k): float(v) for k, v in per.items()}
    except (TypeError, ValueError):
        return None
    return vals if all(map(math.isfinite, vals.values())) else None


def heldout_loss(finetune, step0: bool = False) -> tuple[float | None, dict[str, float] | None]:
    """A fine-tune's held-out loss: (run value, per-record losses or None) from its ``metrics.json``.

    With ``heldout_record_losses`` ({record id: mean token loss}, the same held-out records for every arm)
    the run value is their mean, so the run value and the per-record rows agree; otherwise
    ``final_eval_loss`` (run level only). Lower is better. ``step0``: the same records before the first
    step (``heldout_record_losses_step0``, else the step-0 entry of ``eval_losses``), i.e. under the base
    model (LoRA B = 0, GARFA alpha = 1): the base model's held-out loss.
    """
    ft = finetune if isinstance(finetune, dict) else {}
    per = _per_record(ft, "heldout_record_losses_step0" if step0 else "heldout_record_losses")
    if per:
        return sum(per.values()) / len(per), per
    if step0:
        v = next((e.get("loss") for e in ft.get("eval_losses") or [] if isinstance(e, dict) and e.get("step") == 0),
                 None)
    else:
        v = ft.get("final_eval_loss")
    return (float(v), None) if isinstance(v, (int, float)) and math.isfinite(v) else (None, None)


def attach_base_heldout(base: dict | None, runs: list[dict]) -> None:
    """Give the base row the held-out loss the fine-tunes measured at step 0 (first trial that has it)."""
    src = next((r for r in runs if r.get("base_heldout", (None,))[0] is not None), None)
    if base is None or src is None:
        return
    loss, per = src["base_heldout"]
    base["scores"][HELDOUT] = loss
    if per:
        base["items"][HELDOUT] = per
    base["heldout_from"] = f"step 0 of trial {src['trial_id']}"


def _load_run(rec: dict, tdir: Path, who: str, problems: list[str]) -> dict:
    scores = _scores(rec.get("eval"), who, problems)
    dirs = [Path(rec["items_dir"])] if rec.get("items_dir") else []
    dirs += [tdir / layout.ITEMS, tdir / "items"]  # the study may have moved since it ran
    items = _load_items(dirs, scores, who, problems)
    loss, per_record = heldout_loss(rec.get("finetune"))
    if loss is not None:
        scores[HELDOUT] = loss
        if per_record:
            items[HELDOUT] = per_record
    return {"trial_id": rec.get("trial_id", tdir.name), "arm": rec.get("arm", "?"),
            "control_seed": rec.get("control_seed"), "train_seed": rec.get("train_seed"),
            "scores": scores, "items": items, "base_heldout": heldout_loss(rec.get("finetune"), step0=True),
            "gpu_hours": float(rec.get("gpu_hours") or 0.0), "wall_s": float(rec.get("wall_s") or 0.0),
            "cost": rec.get("cost")}  # per-trial cost accounting (coloc_ray.ablation.cost); None in older records


def load_base(study_dir: Path, problems: list[str]) -> dict | None:
    """The base model's evaluation: ``base/result.json``, else ``base/eval.json`` or ``base/eval/eval.json``."""
    bdir = study_dir / layout.BASE
    if (bdir / layout.RESULT).is_file():
        rec = read_json_checked(bdir / layout.RESULT, problems, "base model")
        if rec is not None:
            return _load_run({**rec, "arm": "base", "control_seed": None, "train_seed": None}, bdir,
                             "base model", problems)
    for ev_path in (bdir / "eval.json", bdir / layout.EVAL / "eval.json"):
        if ev_path.is_file():
            ev = read_json_checked(ev_path, problems, "base model")
            rec = {"trial_id": "base", "arm": "base", "eval": ev, "items_dir": str(ev_path.parent / "items")}
            return _load_run(rec, bdir, "base model", problems)
    problems.append(f"base model: no evaluation in {bdir} (base/eval.json); the base row is empty")
    return None


def load_trials(study_dir: Path, problems: list[str]) -> list[dict]:
    """Every ``trials/<id>/result.json``; a trial folder without one is reported as unfinished."""
    runs = []
    tdirs = sorted(p for p in (study_dir / layout.TRIALS).glob("*") if p.is_dir())
    if not tdirs:
        problems.append(f"no trials in {study_dir / layout.TRIALS}")
    for tdir in tdirs:
        rec = read_json_checked(tdir / layout.RESULT, problems, f"trial {tdir.name}")
        if isinstance(rec, dict):
            runs.append(_load_run(rec, tdir, f"trial {tdir.name}", problems))
    return runs


def missing_grid(runs: list[dict], problems: list[str]) -> None:
    """Report (arm, control seed, training seed) cells that other arms have but this arm lacks."""
    ctrl = sorted({r["control_seed"] for r in runs if r["control_seed"] is not None})
    train = sorted({r["train_seed"] for r in runs if r["train_seed"] is not None}, key=str)
    for arm, rs in by_arm(runs).items():
        have = {(r["control_seed"], r["train_seed"]) for r in rs}
        want = [(c, t) for c in ctrl for t in train] if st.uses_control_seed(rs) else [(None, t) for t in train]
        for c, t in want:
            if (c, t) not in have:
                seed = f"control seed {c}, " if c is not None else ""
                problems.append(f"arm {arm}: no result for {seed}training seed {t}")


def has_heldout(runs) -> bool:
    return any(HELDOUT in r["scores"] for r in runs)


def missing_benches(base, runs, benches, problems: list[str]) -> None:
    for r in ([base] if base else []) + runs:
        for b in benches:
            if b not in r["scores"]:
                problems.append(f"{'base model' if r['arm'] == 'base' else 'trial ' + r['trial_id']}: "
                                f"no score for benchmark {b}")


def by_arm(runs: list[dict]) -> dict[str, list[dict]]:
    arms = sorted({r["arm"] for r in runs}, key=lambda a: (ARM_ORDER.index(a) if a in ARM_ORDER else 9, a))
    return {a: [r for r in runs if r["arm"] == a] for a in arms}


def benchmarks(base, runs) -> list[str]:
    seen = {b for r in ([base] if base else []) + runs for b in r["scores"]} - {HELDOUT}
    return [b for b in BENCH_ORDER if b in seen] + sorted(seen - set(BENCH_ORDER))


def study_config(study_dir: Path) -> dict:
    path = study_dir / layout.STUDY
    try:
        cfg = json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        cfg = {}
    cfg = cfg if isinstance(cfg, dict) else {}
    top_k = cfg.get("top_k", (cfg.get("layer_sets") or {}).get("k"))
    return {"name": cfg.get("name") or study_dir.name, "model": cfg.get("model"), "top_k": top_k,
            "cost_per_gpu_hour": float(cfg.get("cost_per_gpu_hour") or 0.0)}
