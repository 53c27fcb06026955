"""What a trial cost: its record (``result.json`` ``cost``); the report sums them (:mod:`coloc_ray.report.cost`).

A trial records, separately for its fine-tune and its evaluation: wall seconds, GPU-seconds and CPU-seconds;
plus tokens trained, tokens generated and the fine-tune's FLOPs estimate (:func:`finetune_flops`, from the
model's parameter counts, :func:`coloc_ray.models.params.param_counts`).
"""

from __future__ import annotations

import logging
from typing import Optional

log = logging.getLogger(__name__)

#: The per-trial fields (``result.json`` ``cost``) the report sums; None = not measured.
FIELDS = ("finetune_wall_s", "finetune_gpu_s", "finetune_cpu_s", "eval_wall_s", "eval_gpu_s", "eval_cpu_s",
          "tokens_trained", "tokens_generated", "finetune_flops")


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


def number(x) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def model_params(model: str) -> Optional[tuple[tuple[int, ...], int]]:
    """:func:`~coloc_ray.models.params.param_counts` of ``model``, or None (logged) when its config cannot be read
    here: the FLOPs estimate is bookkeeping, never a reason to fail a trial. The driver calls this once per study
    (``TrialContext.model_params``)."""
    try:
        from coloc_ray.models.params import param_counts

        return param_counts(model)
    except Exception as e:  # noqa: BLE001 - bookkeeping: a model whose config cannot be read here costs n/a
        log.warning("fine-tune FLOPs of %s not estimated: %s", model, str(e).splitlines()[0] if str(e) else e)
        return None


def _flops(params: Optional[tuple], ft: dict, adapted: list[int]) -> Optional[dict]:
    tokens = number(ft.get("tokens"))
    trainable = [number(ft.get(k)) for k in ("lora_params", "garfa_params")]
    if params is None or tokens is None or None in trainable or not adapted:
        return None
    blocks, head = params
    return finetune_flops(int(tokens), list(blocks), head, int(sum(trainable)), adapted)


def trial_cost(spec: dict, study: dict, ft: dict, ft_wall_s: float, ev: dict, eval_run: Optional[dict],
               eval_span: dict, params: Optional[tuple] = None) -> dict:
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
        params: the model's ``(block parameters, head parameters)`` (:func:`model_params`); None: no FLOPs.

    Fine-tune GPU-seconds = workers x GPUs per worker x wall; fine-tune CPU-seconds are those the workers hold
    (workers x CPUs per worker x wall: their own CPU time is not measured). The evaluation's GPU- and
    CPU-seconds come from its run record (GPUs it saw x wall; CPU time its process and children used).
    """
    r = study.get("resources") or {}
    base = spec["arm"] == "base"
    workers = 0 if base else int(ft.get("num_workers") or r.get("workers_per_trial", 1))
    ft_wall = 0.0 if base else float(ft_wall_s)
    run = eval_run if isinstance(eval_run, dict) else {}
    span = (number(eval_span.get("end")) or 0.0) - (number(eval_span.get("start")) or 0.0)
    ev_wall = number(run.get("wall_s"))
    ev_wall = ev_wall if ev_wall is not None else round(span, 3)
    ev_gpu = number(run.get("gpu_s"))
    if ev_gpu is None and not run:  # no run record (an older evaluation): the GPUs the study gave it x its span
        eval_gpus = r.get("gpus_per_eval")  # null = gpus_per_worker (ResourceSettings.eval_gpus)
        ev_gpu = float(eval_gpus if eval_gpus is not None else r.get("gpus_per_worker", 0.0)) * span
    new_tokens = [number(v.get("new_tokens")) for v in ev.values() if isinstance(v, dict)]
    flops = None if base else _flops(params, ft, sorted({*spec["lora_layers"], *spec["garfa_layers"]}))
    return {"finetune_wall_s": round(ft_wall, 3),
            "finetune_gpu_s": round(workers * float(r.get("gpus_per_worker", 0.0)) * ft_wall, 3),
            "finetune_cpu_s": round(workers * float(r.get("cpus_per_worker", 0.0)) * ft_wall, 3),
            "eval_wall_s": ev_wall, "eval_gpu_s": ev_gpu, "eval_cpu_s": number(run.get("cpu_s")),
            "tokens_trained": 0 if base else ft.get("tokens"),
            "tokens_generated": int(sum(new_tokens)) if new_tokens and None not in new_tokens else None,
            "finetune_flops": 0 if base else (flops or {}).get("flops"),
            "flops_terms": flops}
