"""The arm registry: an arm registered once is valid in a study, planned with its layer sets and described in the
report; an unknown arm is one line listing the registered ones, wherever it is looked up."""

from __future__ import annotations

import pytest

from coloc_ray.ablation import arms as ar
from coloc_ray.ablation.layersets import build_layer_sets, plan_trials
from coloc_ray.ablation.study_config import StudyConfig, validate_study
from coloc_ray.errors import UserError

SHIPPED = ["A", "B", "C", "D", "base", "lora_only_S", "garfa_only_S", "rope_topk", "all_layers"]


@pytest.fixture()
def toy_arm(monkeypatch):
    """A made-up arm (LoRA on every layer, GARFA on S) registered the documented way, removed after the test."""
    monkeypatch.setattr(ar, "ARMS", dict(ar.ARMS))
    return ar.register_arm(ar.Arm("lora_all_garfa_S", "all", "S", "LoRA on every layer, GARFA on S"))


def test_shipped_arms_and_their_placements():
    assert list(ar.ARMS)[:9] == SHIPPED  # the shipped arms first
    assert [(ar.ARMS[a].lora, ar.ARMS[a].garfa) for a in "ABCD"] == [("S", "S"), ("S", "R"), ("R", "S"), ("R", "R")]
    assert not ar.ARMS["base"].trains and ar.ARMS["rope_topk"].uses_rope and not ar.ARMS["A"].uses_r


def test_a_registered_arm_is_valid_and_planned(toy_arm):
    cfg = StudyConfig(name="x", model="tiny-gqa", arms=["A", "lora_all_garfa_S"], control_seeds=[1],
                      train_seeds=[0])
    assert not [e for e in validate_study(cfg, num_layers=8, stage_configs=False) if "arm" in e]
    sets = build_layer_sets(8, 2, [6, 7], [1])
    (trial,) = [t for t in plan_trials(["lora_all_garfa_S"], sets, [1], [0])]
    assert (trial.lora_layers, trial.garfa_layers, trial.control_seed) == (list(range(8)), [6, 7], None)


def test_unknown_arm_is_one_line_listing_the_arms_everywhere():
    cfg = StudyConfig(name="x", model="tiny-gqa", arms=["A", "E"])
    (err,) = [e for e in validate_study(cfg, num_layers=8, stage_configs=False) if "'E'" in e]
    with pytest.raises(UserError) as e:
        plan_trials(["E"], build_layer_sets(8, 2, [6, 7], [1]), [1], [0])
    for msg in (err, str(e.value)):
        assert "\n" not in msg and all(a in msg for a in SHIPPED), msg


def test_a_bad_placement_names_the_valid_ones():
    with pytest.raises(ValueError, match="'X' is not one of S, R, rope, all, None"):
        ar.register_arm(ar.Arm("bad", "X", None, "-"))
