"""Layer sets (METHOD 7): S, one R per control seed, and the trial plan (which arm runs with which sets).

R for control seed ``s`` is ``sorted(random.Random(s).sample(complement_of_S, k))``: reproducible on any
machine and Python version (``random.Random`` with an int seed is stable), and disjoint from S.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from coloc_ray.ablation.arms import get_arm, resolve_placement
from coloc_ray.errors import UserError


def draw_random_set(num_layers: int, exclude: list[int], k: int, seed: int) -> list[int]:
    """k layers drawn uniformly (seeded) from the layers not in ``exclude``, sorted ascending."""
    pool = [layer for layer in range(num_layers) if layer not in set(exclude)]
    if len(pool) < k:
        raise UserError(f"layer_sets.k = {k}: R must avoid S ({len(exclude)} layers), which needs "
                        f"L >= 2k, but L = {num_layers}; use k <= {num_layers // 2}")
    return sorted(random.Random(seed).sample(pool, k))


def build_layer_sets(num_layers: int, k: int, sensitive: list[int], control_seeds: list[int],
                     rope: list[int] | None = None) -> dict:
    """The study's ``layersets.json``: S, R per control seed, the RoPE top-k, all layers.

    Args:
        num_layers: L.
        k: size of S and of each R.
        sensitive: S (top-k of the sensitivity probe, or given in the study file).
        control_seeds: one R per seed.
        rope: top-k RoPE-influence layers (for the ``rope_topk`` arm), if the probes ran.
    """
    S = sorted(int(x) for x in sensitive)
    if len(S) != k or len(set(S)) != k:
        raise UserError(f"layer_sets: S = {S} must hold k = {k} distinct layers")
    R = {str(s): draw_random_set(num_layers, S, k, s) for s in control_seeds}
    return {"num_layers": num_layers, "k": k, "S": S, "R": R,
            "rope": sorted(rope) if rope is not None else None, "all": list(range(num_layers)),
            "rule": "R[seed] = sorted(random.Random(seed).sample([l not in S], k))"}


@dataclass(frozen=True)
class TrialSpec:
    """One Tune trial: an arm with its seeds and resolved layer sets."""

    trial_id: str
    arm: str
    control_seed: int | None  # None for arms that do not use R (run once per training seed)
    train_seed: int
    lora_layers: list[int]
    garfa_layers: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


def trial_id(arm: str, control_seed: int | None, train_seed: int) -> str:
    return f"{arm}-c{control_seed}-t{train_seed}" if control_seed is not None else f"{arm}-t{train_seed}"


def plan_trials(arms: list[str], layer_sets: dict, control_seeds: list[int],
                train_seeds: list[int]) -> list[TrialSpec]:
    """Every trial of the study. Arms not using R run once per training seed, not once per control seed;
    the ``base`` arm is not a trial (the base model is always evaluated in ``base/``)."""
    out = []
    for name in arms:
        arm = get_arm(name)  # an unknown name: one line listing the arms
        if not arm.trains:
            continue
        for t in train_seeds:
            for c in (control_seeds if arm.uses_r else [None]):
                sets = {"S": layer_sets["S"], "all": layer_sets["all"]}
                if c is not None:
                    sets["R"] = layer_sets["R"][str(c)]
                if arm.uses_rope:
                    sets["rope"] = layer_sets["rope"]
                out.append(TrialSpec(trial_id(name, c, t), name, c, t,
                                     resolve_placement(arm.lora, sets), resolve_placement(arm.garfa, sets)))
    return out
