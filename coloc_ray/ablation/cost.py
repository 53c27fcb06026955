"""What a trial cost: its record (``result.json`` ``cost``) and the report's per-arm cost table.

A trial records, separately for its fine-tune and its evaluation: wall seconds, GPU-seconds and CPU-seconds;
plus tokens trained, tokens generated and the fine-tune's FLOPs estimate (:func:`finetune_flops`). The report
sums them per arm (:func:`cost_table`). A record written before this accounting existed has no ``cost``: its
fields show "n/a", and its GPU-hours fall back to the trial's ``gpu_hours`` (trial wall x GPUs it asked for).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional

log = logging.getLogger(__name__)

#: The per-trial fields (``result.json`` ``cost``) the report sums; None = not measured.
FIELDS = ("finetune_wall_s", "finetune_gpu_s", "finetune_cpu_s", "eval_wall_s", "eval_gpu_s", "eval_cpu_s",
          "tokens_trained", "tokens_generated", "finetune_flops")


@functools.lru_cache(maxsize=8)
def param_counts(model_spec: str) -> tuple[tuple[int, ...], int]:
    """(parameters of each decoder block, parameters of the final norm + LM head) of ``model_spec``.

    Counted on the meta device from the model's config (no weights loaded), so a 4-bit base counts its full
    parameters (bitsandbytes packs two 4-bit weights per stored element). The LM head counts even when it is
    tied to the input embedding: its matmul runs either way; the embedding lookup itself is no matmul.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from coloc_ray.models import decoder_layers, resolve_model_dir
    from coloc_ray.models.introspect import final_norm

    path, extra = resolve_model_dir(model_spec)
    config = AutoConfig.from_pretrained(path, **extra)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    blocks = tuple(sum(p.numel() for p in block.parameters()) for block in decoder_layers(model))
    head = sum(p.numel() for p in final_norm(model).parameters())
    head += sum(p.numel() for p in model.get_output_embeddings().parameters())
    return blocks, head


def finetune_flops(tokens: int, blocks: list[int], head: int, trainable: int, adapted_layers: list[int]) -> dict:
    """The fine-tune's FLOPs estimate (the 6 N T rule, with the backward cut below the lowest adapted layer).

        FLOPs = 2 T N_all + 2 T N_frozen_from(l) + 4 T N_trainable

    - T: tokens trained (the loop's ``tokens``: non-padding tokens over all steps and ranks).
    - N_all = sum(blocks) + head + N_trainable: the forward multiplies every parameter of every block, the
      final norm and LM head, and the adapters (their forward is in this term).
    - N_frozen_from(l) = sum(blocks[l:]) + head, l = the lowest layer carrying LoRA or GARFA: the backward
      computes activation gradients (2 T N) from the loss down to l only, and the frozen base gets no weight
      gradients (which would be 2 T N more).
    - 4 T N_trainable: the adapters' own activation gradients and weight gradients (2 + 2).

    The held-out evaluations inside the fine-tune (forward only, a few per run) are not counted; a
    mixture-of-experts block counts all its experts (an upper bound: a token runs only the routed ones).

    Returns:
        ``{"flops", "n_all", "n_frozen_from_lowest", "n_trainable", "lowest_adapted_layer"}``.
    """
    lowest = min(adapted_layers)
    n_all = sum(blocks) + head + trainable
    n_from = sum(blocks[lowest:]) + head
    flops = 2 * tokens * n_all + 2 * tokens * n_from + 4 * tokens * trainable
    return {"flops": flops, "n_all": n_all, "n_frozen_from_lowest": n_from, "n_trainable": trainable,
            "lowest_adapted_layer": lowest}


def _num(x) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _flops(model: str, ft: dict, adapted: list[int]) -> Optional[dict]:
    tokens = _num(ft.get("tokens"))
    trainable = [_num(ft.get(k)) for k in ("lora_params", "garfa_params")]
    if tokens is None or None in trainable or not adapted:
        return None
    try:
        blocks, head = param_counts(model)
    except Exception as e:  # noqa: BLE001 - bookkeeping: a model whose config cannot be read here costs n/a
        log.warning("fine-tune FLOPs of %s not estimated: %s", model, str(e).splitlines()[0] if str(e) else e)
        return None
    return finetune_flops(int(tokens), list(blocks), head, int(sum(trainable)), adapted)


def trial_cost(spec: dict, study: dict, ft: dict, ft_wall_s: float, ev: dict, eval_run: Optional[dict],
               eval_span: dict) -> dict:
    """A trial's ``cost`` record.

    Args:
        spec: the trial (``arm``, ``lora_layers``, ``garfa_layers``).
        study: the resolved study dict (``model``, ``resources``, ``evaluation``).
        ft: the fine-tune's metrics.json (``tokens``, ``num_workers``, ``lora_params``, ``garfa_params``);
            ``{}`` for the base model.
        ft_wall_s: how long the fine-tune stage ran in this trial (0 for the base model).
        ev: eval.json (``new_tokens`` per benchmark).
        eval_run: the evaluation's run record (eval_config.json ``run``: ``wall_s, cpu_s, gpus, gpu_s``), or None.
        eval_span: ``{"start", "end"}`` of the evaluation, used when there is no run record.

    Fine-tune GPU-seconds = workers x GPUs per worker x wall; fine-tune CPU-seconds are those the workers hold
    (workers x CPUs per worker x wall: their own CPU time is not measured). The evaluation's GPU- and
    CPU-seconds come from its run record (GPUs it saw x wall; CPU time its process and children used).
    """
    r = study.get("resources") or {}
    base = spec["arm"] == "base"
    workers = 0 if base else int(ft.get("num_workers") or r.get("workers_per_trial", 1))
    ft_wall = 0.0 if base else float(ft_wall_s)
    run = eval_run if isinstance(eval_run, dict) else {}
    span = (_num(eval_span.get("end")) or 0.0) - (_num(eval_span.get("start")) or 0.0)
    ev_wall = _num(run.get("wall_s"))
    ev_wall = ev_wall if ev_wall is not None else round(span, 3)
    ev_gpu = _num(run.get("gpu_s"))
    if ev_gpu is None and not run:  # no run record (an older evaluation): the GPUs the study gave it x its span
        eval_gpus = r.get("gpus_per_eval")  # null = gpus_per_worker (ResourceSettings.eval_gpus)
        ev_gpu = float(eval_gpus if eval_gpus is not None else r.get("gpus_per_worker", 0.0)) * span
    new_tokens = [_num(v.get("new_tokens")) for v in ev.values() if isinstance(v, dict)]
    flops = None if base else _flops(study["model"], ft, sorted({*spec["lora_layers"], *spec["garfa_layers"]}))
    return {"finetune_wall_s": round(ft_wall, 3),
            "finetune_gpu_s": round(workers * float(r.get("gpus_per_worker", 0.0)) * ft_wall, 3),
            "finetune_cpu_s": round(workers * float(r.get("cpus_per_worker", 0.0)) * ft_wall, 3),
            "eval_wall_s": ev_wall, "eval_gpu_s": ev_gpu, "eval_cpu_s": _num(run.get("cpu_s")),
            "tokens_trained": 0 if base else ft.get("tokens"),
            "tokens_generated": int(sum(new_tokens)) if new_tokens and None not in new_tokens else None,
            "finetune_flops": 0 if base else (flops or {}).get("flops"),
            "flops_terms": flops}


# -- the report's table ---------------------------------------------------------------------------
def _sum(values: list) -> Optional[float]:
    """The sum, or None ("n/a") when any value is unknown."""
    return None if any(v is None for v in values) else float(sum(values))


def _hours(x: Optional[float]) -> Optional[float]:
    return None if x is None else x / 3600


def _row(rs: list[dict], rate: float) -> dict:
    costs = [r.get("cost") if isinstance(r.get("cost"), dict) else {} for r in rs]
    col = {f: _sum([_num(c.get(f)) for c in costs]) for f in FIELDS}
    # a run's GPU-hours: fine-tune + evaluation when recorded, else its legacy gpu_hours (trial wall x GPUs)
    gpu_h = [(_num(c.get("finetune_gpu_s")) + _num(c.get("eval_gpu_s"))) / 3600
             if _num(c.get("finetune_gpu_s")) is not None and _num(c.get("eval_gpu_s")) is not None
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
