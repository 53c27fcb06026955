"""Arm registry (METHOD 7): each arm names where LoRA goes and where GARFA goes.

A placement is one of ``"S"`` (top-k sensitivity), ``"R"`` (a random control set), ``"rope"`` (top-k RoPE
influence), ``"all"`` (every layer) or ``None`` (that method is not used). An arm without any placement is
the base model: it is never trained (the spine always evaluates the base model in ``base/``).
Arms that do not use R are run once per training seed, not once per control seed.

This registry is the only list of arms: study validation, the trial plan and the report read it. Adding an arm
is one ``register_arm`` line below and its test (CONTRIBUTING.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from coloc_ray.errors import UserError

PLACEMENTS = ("S", "R", "rope", "all", None)


@dataclass(frozen=True)
class Arm:
    """One arm of the ablation.

    Attributes:
        name: registry name used in study files.
        lora: LoRA placement (see module doc).
        garfa: GARFA placement.
        description: one line for the report.
    """

    name: str
    lora: str | None
    garfa: str | None
    description: str

    @property
    def uses_r(self) -> bool:
        return "R" in (self.lora, self.garfa)

    @property
    def trains(self) -> bool:
        return self.lora is not None or self.garfa is not None

    @property
    def uses_rope(self) -> bool:
        return "rope" in (self.lora, self.garfa)


ARMS: dict[str, Arm] = {}


def register_arm(arm: Arm) -> Arm:
    """Add an arm to the registry (later registration of the same name replaces it)."""
    for p in (arm.lora, arm.garfa):
        if p not in PLACEMENTS:
            raise ValueError(f"arm {arm.name!r}: placement {p!r} is not one of {', '.join(map(str, PLACEMENTS))}")
    ARMS[arm.name] = arm
    return arm


for _arm in (
    Arm("A", "S", "S", "co-localized: LoRA and GARFA on S"),
    Arm("B", "S", "R", "LoRA placement only: LoRA on S, GARFA on R"),
    Arm("C", "R", "S", "GARFA placement only: LoRA on R, GARFA on S"),
    Arm("D", "R", "R", "random control: LoRA and GARFA on R"),
    Arm("base", None, None, "base model, no fine-tuning"),
    Arm("lora_only_S", "S", None, "LoRA on S, no GARFA"),
    Arm("garfa_only_S", None, "S", "GARFA on S, no LoRA"),
    Arm("rope_topk", "rope", "rope", "LoRA and GARFA on the top-k RoPE-influence layers"),
    Arm("all_layers", "all", "all", "LoRA and GARFA on every layer"),
):
    register_arm(_arm)


def get_arm(name: str) -> Arm:
    """The arm called ``name``, or a UserError listing the valid names."""
    try:
        return ARMS[name]
    except KeyError:
        raise UserError(f"unknown arm {name!r}; valid arms: {', '.join(ARMS)}") from None


def resolve_placement(placement: str | None, sets: dict[str, list[int]]) -> list[int]:
    """Layers of a placement given the named sets (``S``, ``R``, ``rope``, ``all``); ``None`` -> []."""
    if placement is None:
        return []
    return sorted(sets[placement])
