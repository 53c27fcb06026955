"""The spine calls each stage with every setting by name: a stage that lacks one fails, nothing is dropped."""

from __future__ import annotations

import dataclasses
import inspect
import types

import pytest

from coloc_ray.ablation import spine
from coloc_ray.ablation.stages import real_stages
from coloc_ray.ablation.study_config import StudyConfig
from coloc_ray.models import resolve_model_ref
from coloc_ray.storage import Storage
from tests.ablation import fakes
from tests.ablation.conftest import tiny_study_dict


def _tracker():
    return types.SimpleNamespace(log_artifacts=lambda *a, **k: None, log_series=lambda *a, **k: None)


def test_a_stage_without_a_setting_fails_instead_of_dropping_it(tmp_path):
    cfg = StudyConfig.model_validate(tiny_study_dict(tmp_path))
    model = spine.ModelKey(resolve_model_ref("tiny-gqa"), "key")

    def sensitivity(model, *, pairs, pooling, top_k, num_workers):  # takes no sink_multiple
        raise AssertionError("called without the study's sink_multiple")

    stages = dataclasses.replace(fakes.stages(), sensitivity=sensitivity)
    with pytest.raises(TypeError, match="sink_multiple"):
        spine._probes_and_analysis(cfg, model, tmp_path, stages, _tracker(), Storage(str(tmp_path)))
    assert not (tmp_path / "probes").exists()  # nothing half-written
    # the fakes take what the spine passes, and the spine's probes stage runs with them
    sens, rope, _ = spine._probes_and_analysis(cfg, model, tmp_path, fakes.stages(), _tracker(),
                                              Storage(str(tmp_path)))
    assert sens["model"] == "tiny-gqa" and len(rope["scores"]) == fakes.NUM_LAYERS


def test_the_real_stages_take_the_calls_the_fakes_take():
    """Each real stage's signature binds the keyword call its fake (same names, tests/ablation/fakes.py) gets."""
    real, fake = real_stages(), fakes.stages()
    for name in ("sensitivity", "rope_influence", "analysis"):
        params = inspect.signature(getattr(fake, name)).parameters
        kw = {p: None for p, v in params.items() if v.kind is v.KEYWORD_ONLY}
        pos = [None] * sum(v.kind is v.POSITIONAL_OR_KEYWORD for v in params.values())
        inspect.signature(getattr(real, name)).bind(*pos, **kw)  # TypeError: a setting the real stage lacks
    for name in ("finetune", "evaluate", "report"):
        inspect.signature(getattr(real, name)).bind(*[None] * len(inspect.signature(getattr(fake, name)).parameters))
