"""The study's training / evaluation sections are FinetuneConfig / EvalConfig themselves (issue 13.2).

``data/shipped_stage_configs.json`` holds the resolved stage configs of every shipped study as the study code
produced them *before* the sections were composed (the trial-invariant part; recorded with the mirrored
sections, ``vllm_available`` off). ``data/legacy_study.json`` is a ``study.json`` written by that code.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

import coloc_ray.evaluation.config as eval_config_module
from coloc_ray.ablation import sections, spine
from coloc_ray.ablation.layersets import build_layer_sets, plan_trials
from coloc_ray.ablation.sections import eval_config_dict, finetune_config_dict
from coloc_ray.ablation.study_config import StudyConfig, load_study
from coloc_ray.ablation.trial import TrialContext, eval_config, finetune_config
from coloc_ray.evaluation.config import EvalConfig
from coloc_ray.finetune.config import FinetuneConfig
from coloc_ray.io import config_hash
from tests.conftest import REPO

DATA = Path(__file__).parent / "data"
SHIPPED = sorted((REPO / "studies").glob("*.yaml")) + sorted((REPO / "jobs").glob("*.yaml"))
EXPECTED = json.loads((DATA / "shipped_stage_configs.json").read_text())


@pytest.fixture(autouse=True)
def _no_vllm(monkeypatch):
    """``backend: auto`` resolves to hf on every machine, as when the expectation was recorded."""
    monkeypatch.setattr(eval_config_module, "vllm_available", lambda: False)


def _specs(cfg: StudyConfig) -> list[dict]:
    k = cfg.layer_sets.k
    sets = build_layer_sets(4 * k, k, list(range(k)), cfg.control_seed_list, list(range(k, 2 * k)))
    base = {"trial_id": "base", "arm": "base", "control_seed": None, "train_seed": 0, "lora_layers": [],
            "garfa_layers": []}
    return [base] + [s.to_dict() for s in plan_trials(cfg.arms, sets, cfg.control_seed_list, cfg.train_seed_list)]


def _direct(raw: dict, spec: dict) -> tuple[FinetuneConfig, EvalConfig]:
    """The stage configs built straight from the YAML's sections plus the trial's own keys (an independent oracle)."""
    r = {"workers_per_trial": 1, "cpus_per_worker": 0.5, "gpus_per_worker": 0.0, **raw.get("resources", {})}
    experiment = raw.get("experiment") or f"coloc-{raw['name']}"
    tracking = {"tracking_uri": raw.get("tracking_uri"), "experiment": experiment}
    ft = FinetuneConfig(**raw.get("training", {}), model=raw["model"], lora_layers=spec["lora_layers"],
                        garfa_layers=spec["garfa_layers"], seed=spec["train_seed"], num_workers=r["workers_per_trial"],
                        cpus_per_worker=r["cpus_per_worker"], use_gpu=r["gpus_per_worker"] > 0,
                        **({"gpus_per_worker": r["gpus_per_worker"]} if r["gpus_per_worker"] > 0 else {}),
                        run_name=f"{spec['trial_id']}/finetune", parent_run_id="p", tracking=True, **tracking)
    ev = EvalConfig(**{"seed": 1234, **raw.get("evaluation", {})}, model=raw["model"],
                    adapter=None if spec["arm"] == "base" else "/a", **tracking)
    return ft, ev


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_study_stage_configs(path):
    raw = yaml.safe_load(path.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # shipped files use no deprecated `extra:` stage keys
        cfg = load_study(path)
    ctx = TrialContext(study=cfg, storage="unused")
    want = EXPECTED[f"{path.parent.name}/{path.name}"]
    for spec in _specs(cfg):
        ev = eval_config(ctx, None if spec["arm"] == "base" else "/a", spec)
        direct_ft, direct_ev = _direct(raw, spec)
        assert ev == direct_ev, spec["trial_id"]
        assert {k: v for k, v in ev.model_dump(mode="json").items() if k != "adapter"} == want["eval"]
        if spec["arm"] == "base":
            continue
        ft = finetune_config(ctx, spec, "p")
        assert ft == direct_ft, spec["trial_id"]
        got = {k: v for k, v in ft.model_dump(mode="json").items()
               if k not in ("lora_layers", "garfa_layers", "seed", "run_name")}
        assert got == {**want["finetune"], "parent_run_id": "p"}


def test_sections_are_the_stage_configs_less_the_trial_keys():
    for key, stage in (("training", FinetuneConfig), ("evaluation", EvalConfig)):
        section = sections.SECTIONS[key]
        assert set(section.model_fields) == set(stage.model_fields) - set(sections.TRIAL_KEYS[key]) | {"extra"}
        assert set(sections.TRIAL_KEYS[key]) <= set(stage.model_fields)
        for name, f in section.model_fields.items():
            if name == "extra":
                continue
            g = stage.model_fields[name]
            own = sections.STUDY_DEFAULTS.get(key, {}).get(name, {})
            assert (f.annotation, f.metadata) == (g.annotation, g.metadata), f"{key}.{name}"
            assert f.get_default(call_default_factory=True) == own.get(
                "default", g.get_default(call_default_factory=True)), f"{key}.{name}"
            assert f.description == own.get("description", g.description), f"{key}.{name}"
    assert StudyConfig.model_fields["training"].annotation is sections.TrainingSettings
    assert StudyConfig.model_fields["evaluation"].annotation is sections.EvalSettings


def test_trial_keys_are_what_the_trial_fills_in():
    study = StudyConfig.model_validate({"name": "x", "model": "tiny-gqa",
                                        "resources": {"gpus_per_worker": 1.0}}).resolved()
    spec = {"trial_id": "A-t0", "arm": "A", "control_seed": None, "train_seed": 0, "lora_layers": [0],
            "garfa_layers": [1]}
    ft = set(finetune_config_dict(study, spec, "p")) - set(sections.stage_keys("training"))
    assert ft == set(sections.TRIAL_KEYS["training"]) - {"storage_path"}  # the trial sets storage_path later
    ev = set(eval_config_dict(study, "/a", spec)) - set(sections.stage_keys("evaluation"))
    assert ev <= set(sections.TRIAL_KEYS["evaluation"])


def test_a_stage_key_is_a_study_key_and_unknown_keys_are_refused():
    cfg = StudyConfig.model_validate({"name": "x", "model": "tiny-gqa", "training": {"max_grad_norm": 0.5},
                                      "evaluation": {"n_bootstrap": 500}})
    study = cfg.resolved()
    assert study["training"]["max_grad_norm"] == 0.5 and study["evaluation"]["n_bootstrap"] == 500
    from coloc_ray.ablation.study_config import schema_errors

    errs = schema_errors({"name": "x", "model": "m", "training": {"max_grad_nrm": 1, "lr": 0},
                          "evaluation": {"seed": "a"}})
    assert any("training.max_grad_nrm" in e and "unknown key" in e for e in errs)
    assert any(e.startswith("study: training.lr = 0") for e in errs)
    assert any(e.startswith("study: evaluation.seed = 'a'") for e in errs)
    errs = schema_errors({"name": "x", "model": "m", "training": {"model": "other"}})  # a per-trial key
    assert any("training.model" in e for e in errs)


def test_old_extra_and_null_eval_every_read_as_before():
    old = {"name": "x", "model": "tiny-gqa",
           "training": {"max_steps": 5, "eval_every": None, "data": {}, "lora_alpha": 32,
                        "extra": {"heldout_fraction": 0.1, "strategy": "fsdp", "fake_knob": 3}},
           "evaluation": {"extra": {"n_bootstrap": 500}}}
    sections._WARNED.clear()
    with pytest.warns(FutureWarning) as caught:
        cfg = StudyConfig.model_validate(old)
    assert sorted(str(w.message).split(":")[0] for w in caught) == [
        "evaluation.extra holds evaluation keys (n_bootstrap)", "training.extra holds training keys (heldout_fraction, "
        "strategy)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # once per process
        StudyConfig.model_validate(old)
    t = cfg.training
    assert (t.heldout_fraction, t.strategy, t.eval_every, t.extra) == (0.1, "fsdp", 200, {"fake_knob": 3})
    assert cfg.evaluation.n_bootstrap == 500 and cfg.evaluation.extra == {}
    spec = {"trial_id": "A-t0", "arm": "A", "control_seed": None, "train_seed": 0, "lora_layers": [0],
            "garfa_layers": [1]}
    d = finetune_config_dict(cfg.resolved(), spec, None)
    assert d["fake_knob"] == 3  # a custom stage's key still reaches its config


def _study_dir(tmp_path: Path, study: dict) -> Path:
    d = tmp_path / "study"
    d.mkdir()
    (d / "study.json").write_text(json.dumps(study))
    return d


def test_a_study_dir_written_with_the_old_sections_resumes(tmp_path):
    """An old ``study.json`` and its trials' hashes (the old formula, written out) are recognised."""
    from coloc_ray.storage import Storage

    legacy = json.loads((DATA / "legacy_study.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        cfg = StudyConfig.model_validate(legacy)
    study = cfg.resolved()
    assert study["training"] != legacy["training"]  # the layout did change
    d = _study_dir(tmp_path, legacy)
    previous = spine._check_same_study(d, study, str(d))  # no "differs in" refusal
    assert previous == legacy
    key = spine._model_key(cfg, spine.resolve_model(cfg), d, str(d), resumed=True)  # begun before fingerprints: keyed by the name
    assert key.key == "tiny-gqa" and json.loads((d / "model.json").read_text())["hash_key"] == "name"
    sets = build_layer_sets(4, 2, [2, 3], cfg.control_seed_list)
    specs = spine._trial_specs(cfg, key, sets)
    store = Storage(str(d))
    for s in specs:  # every trial finished under the old code, with the old hash
        plain = {k: v for k, v in s.items() if k != "config_hash"}
        deps = {"model": legacy["model"], "evaluation": legacy["evaluation"],
                **({"training": legacy["training"]} if s["arm"] != "base" else {})}
        rel = spine.trial_rel(s)
        store.write_text(f"{rel}/result.json", json.dumps({"trial_id": s["trial_id"], "arm": s["arm"], "eval": {}}))
        store.write_text(f"{rel}/{spine.DONE}", config_hash({**deps, **plain}))
    assert spine._check_done_trials(store, specs, previous) == []  # none runs again
    assert all(store.read_text(f"{spine.trial_rel(s)}/{spine.DONE}") == s["config_hash"] for s in specs)
    assert spine._check_done_trials(store, specs) == []  # migrated: the next resume needs no old file


def test_changed_section_keys_are_refused_unless_free(tmp_path):
    cfg = StudyConfig.model_validate(yaml.safe_load((REPO / "studies/tiny_test.yaml").read_text()))
    study = cfg.resolved()
    d = _study_dir(tmp_path, study)
    sets = build_layer_sets(4, 2, [2, 3], cfg.control_seed_list)
    model = spine._model_key(cfg, spine.resolve_model(cfg), tmp_path, str(tmp_path), resumed=False)
    base_hashes = [s["config_hash"] for s in spine._trial_specs(cfg, model, sets)]
    for key, value, free in (("training.max_grad_norm", 0.5, False), ("evaluation.n_bootstrap", 500, False),
                             ("training.log_every", 1, True), ("evaluation.evalplus_workers", 4, True)):
        section, name = key.split(".")
        new = cfg.model_copy(deep=True)
        setattr(getattr(new, section), name, value)
        hashes = [s["config_hash"] for s in spine._trial_specs(new, model, sets)]
        if free:
            spine._check_same_study(d, new.resolved(), str(d))
            assert hashes == base_hashes, key
        else:
            with pytest.raises(spine.UserError, match=f"differs in: {key}"):
                spine._check_same_study(d, new.resolved(), str(d))
            assert hashes[1:] != base_hashes[1:] and (section == "training") == (hashes[0] == base_hashes[0]), key
