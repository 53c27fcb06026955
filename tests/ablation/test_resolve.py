"""The driver pins the tracking store and input paths before trials start in their own working dirs."""

from __future__ import annotations

import os

from coloc_ray.ablation.sections import eval_config_dict, finetune_config_dict
from coloc_ray.ablation.spine import resolve_paths
from coloc_ray.ablation.study_config import StudyConfig


def test_relative_sqlite_and_pairs_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.jsonl").write_text("")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = StudyConfig.model_validate({"name": "x", "model": "tiny-gqa", "probes": {"pairs": "pairs.jsonl"}})
    r = resolve_paths(cfg)
    assert r.tracking_uri == f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert r.probes.pairs == str(tmp_path / "pairs.jsonl")
    rel = resolve_paths(cfg.model_copy(update={"tracking_uri": "sqlite:///sub/m.db"}))
    assert rel.tracking_uri == f"sqlite:///{tmp_path / 'sub' / 'm.db'}"
    http = resolve_paths(cfg.model_copy(update={"tracking_uri": "http://127.0.0.1:5000"}))
    assert http.tracking_uri == "http://127.0.0.1:5000"
    assert cfg.tracking_uri is None  # the caller's config is not mutated
    assert os.path.isabs(r.probes.pairs)


def test_trial_configs_carry_the_trial_and_the_study_settings():
    cfg = StudyConfig.model_validate({"name": "x", "model": "tiny-gqa", "training": {"max_steps": 7, "lr": 1e-3,
                                      "data": {"max_records": 5}, "extra": {"log_every": 3}},
                                      "resources": {"workers_per_trial": 2, "cpus_per_worker": 0.25},
                                      "evaluation": {"limit": 3, "benchmarks": ["mmlu"]}})
    study = cfg.resolved()
    spec = {"trial_id": "B-c123-t1", "arm": "B", "control_seed": 123, "train_seed": 1, "lora_layers": [2, 3],
            "garfa_layers": [0, 1]}
    ft = finetune_config_dict(study, spec, "parent123")
    got = (ft["max_steps"], ft["lr"], ft["seed"], ft["lora_layers"], ft["garfa_layers"])
    assert got == (7, 1e-3, 1, [2, 3], [0, 1])
    assert (ft["num_workers"], ft["cpus_per_worker"], ft["use_gpu"]) == (2, 0.25, False)
    assert ft["data"]["max_records"] == 5 and ft["log_every"] == 3 and ft["parent_run_id"] == "parent123"
    from coloc_ray.finetune.config import FinetuneConfig

    FinetuneConfig.model_validate(ft)  # the real config accepts every key the study produces
    ev = eval_config_dict(study, "/a/adapter", spec)
    # the evaluation seed is the study's, not the training seed: every arm and the base see the same prompts
    assert (ev["adapter"], ev["limit"], ev["benchmarks"], ev["seed"]) == ("/a/adapter", 3, ["mmlu"], 1234)
    assert eval_config_dict(study, None, {**spec, "train_seed": 0, "arm": "base"})["seed"] == 1234
    from coloc_ray.evaluation.config import EvalConfig

    EvalConfig.model_validate(ev)


def test_resume_without_study_json_is_a_user_error(tmp_path, capsys):
    from coloc_ray.cli import main

    assert main(["resume", str(tmp_path)]) == 2
    assert "no study.json" in capsys.readouterr().err
