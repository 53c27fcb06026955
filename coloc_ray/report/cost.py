"""The report's per-arm cost table, summed from each trial's ``cost`` record (:mod:`coloc_ray.ablation.cost`).

A record written before per-trial cost accounting has no ``cost``: its fields show "n/a", and its GPU-hours fall
back to the trial's ``gpu_hours`` (trial wall x GPUs it asked for).
"""

from __future__ import annotations

from typing import Any, Optional

from coloc_ray.ablation.cost import FIELDS, number


def _sum(values: list) -> Optional[float]:
    """The sum, or None ("n/a") when any value is unknown."""
    return None if any(v is None for v in values) else float(sum(values))


def _hours(x: Optional[float]) -> Optional[float]:
    return None if x is None else x / 3600


def _row(rs: list[dict], rate: float) -> dict:
    costs = [r.get("cost") if isinstance(r.get("cost"), dict) else {} for r in rs]
    col = {f: _sum([number(c.get(f)) for c in costs]) for f in FIELDS}
    # a run's GPU-hours: fine-tune + evaluation when recorded, else its legacy gpu_hours (trial wall x GPUs)
    gpu_h = [(number(c.get("finetune_gpu_s")) + number(c.get("eval_gpu_s"))) / 3600
             if number(c.get("finetune_gpu_s")) is not None and number(c.get("eval_gpu_s")) is not None
             else float(r.get("gpu_hours") or 0.0) for r, c in zip(rs, costs)]
    ft_cpu, ev_cpu = col["finetune_cpu_s"], col["eval_cpu_s"]
    return {"runs": len(rs), "finetune_gpu_hours": _hours(col["finetune_gpu_s"]),
            "eval_gpu_hours": _hours(col["eval_gpu_s"]), "gpu_hours": sum(gpu_h), "cost": sum(gpu_h) * rate,
            "finetune_cpu_hours": _hours(ft_cpu), "eval_cpu_hours": _hours(ev_cpu),
            "cpu_hours": None if ft_cpu is None or ev_cpu is None else (ft_cpu + ev_cpu) / 3600,
            "tokens_trained": col["tokens_trained"], "tokens_generated": col["tokens_generated"],
            "finetune_tflops": None if col["finetune_flops"] is None else col["finetune_flops"] / 1e12,
            "wall_s": float(sum(float(r.get("wall_s") or 0.0) for r in rs))}


def cost_table(base: Optional[dict], by_arm: dict[str, list[dict]], rate: float) -> dict:
    """results.json ``cost``: per arm (base first) and in total; None where a run lacks the field."""
    groups = {**({"base": [base]} if base else {}), **by_arm}
    per = {arm: _row(rs, rate) for arm, rs in groups.items()}
    total: dict[str, Any] = _row([], rate)
    for k in total:
        total[k] = _sum([v[k] for v in per.values()])
    total["runs"] = int(total["runs"])
    return {"cost_per_gpu_hour": rate, "per_arm": per, "total": total,
            "legacy_runs": sum(1 for rs in groups.values() for r in rs if not isinstance(r.get("cost"), dict))}


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _big(x) -> str:
    """A token or TFLOP count: exact with separators when large, three significant digits when small."""
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _cells(v: dict, gpu: bool) -> list[str]:
    if gpu:
        return [_fmt(v["finetune_gpu_hours"], ".3f"), _fmt(v["eval_gpu_hours"], ".3f"), f"{v['gpu_hours']:.3f}",
                f"${v['cost']:.2f}"]
    return ["0", _fmt(v["finetune_cpu_hours"], ".3f"), _fmt(v["eval_cpu_hours"], ".3f"), f"${v['cost']:.2f}"]


def md_cost(c: dict) -> list[str]:
    """The report's "Compute and cost" section: GPU-hours split by stage, or CPU-hours for a CPU run."""
    gpu = c["total"]["gpu_hours"] > 0
    head = ["Arm", "runs", *(["fine-tune GPU-h", "eval GPU-h", "total GPU-h"] if gpu else
                             ["GPU-h", "fine-tune CPU-h", "eval CPU-h"]),
            "cost", "tokens trained", "tokens generated", "fine-tune TFLOPs", "wall hours"]
    rows = [[arm, str(v["runs"]), *_cells(v, gpu), _big(v["tokens_trained"]), _big(v["tokens_generated"]),
             _big(v["finetune_tflops"]), f"{v['wall_s'] / 3600:.2f}"]
            for arm, v in [*c["per_arm"].items(), ("total", c["total"])]]
    out = ["## Compute and cost", "", f"Rate: ${c['cost_per_gpu_hour']:.2f} per GPU-hour.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *["| " + " | ".join(r) + " |" for r in rows],
           ""]
    if not gpu:
        out += ["No GPU was used (CPU run): 0 GPU-hours, no GPU cost; CPU-hours shown instead (fine-tune: the "
                "CPUs its workers held x wall; evaluation: the CPU time it used).", ""]
    if c.get("legacy_runs"):
        out += [f"n/a: {c['legacy_runs']} run(s) recorded before per-trial cost accounting (no `cost` in their "
                "result.json); their GPU-hours are the trial's wall x the GPUs it asked for.", ""]
    return out
