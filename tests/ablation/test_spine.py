"""The spine on a real local Ray Tune with fake stages: 2 trials at a time, retries, skip by config hash,
one MLflow child run per trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coloc_ray.ablation.spine import run_study
from coloc_ray.ablation.study_config import StudyConfig
from coloc_ray.errors import UserError
from coloc_ray.models.ref import RESOLUTIONS, resolve_model_ref
from tests.ablation.conftest import fake_knobs, mlflow_children, tiny_study_dict

pytestmark = pytest.mark.ray

ARMS = ["A", "B", "D"]
TRIALS = {"base", "A-t0", "B-c123-t0", "B-c124-t0", "D-c123-t0", "D-c124-t0"}


@pytest.fixture(scope="module")
def study(ray_local, fakes_by_value, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spine")
    cfg = StudyConfig.model_validate(tiny_study_dict(tmp, arms=ARMS))
    fakes_by_value.KNOBS.clear()
    fakes_by_value.KNOBS.update(fake_knobs(tmp, fail_once="B-c123-t0"))  # first attempt raises, Tune retries it
    fakes_by_value.DRIVER_CALLS.clear()
    before = RESOLUTIONS["tiny-gqa"]
    out = run_study(cfg, stages=fakes_by_value.stages(), echo=False)
    return {"cfg": cfg, "dir": Path(out["study_dir"]), "out": out, "tmp": tmp, "fakes": fakes_by_value,
            "driver_calls": dict(fakes_by_value.DRIVER_CALLS), "resolutions": RESOLUTIONS["tiny-gqa"] - before}


def _calls(study):
    return study["fakes"].read_calls(study["tmp"] / "calls.log")


def test_every_trial_recorded_with_contract_fields(study):
    d = study["dir"]
    assert set(study["out"]["trials"]) == TRIALS
    sets = json.loads((d / "layersets.json").read_text())
    assert sets["S"] == [2, 3]  # fake sensitivity rises with depth: top-2 of 4 layers
    for tid in TRIALS - {"base"}:
        rec = json.loads((d / "trials" / tid / "result.json").read_text())
        assert set(rec) >= {"trial_id", "arm", "control_seed", "train_seed", "lora_layers", "garfa_layers",
                            "finetune", "eval", "items_dir", "wall_s", "gpu_hours", "mlflow_run_id"}
        R = sets["R"].get(str(rec["control_seed"]))
        want = {"A": (sets["S"], sets["S"]), "B": (sets["S"], R), "D": (R, R)}[rec["arm"]]
        assert (rec["lora_layers"], rec["garfa_layers"]) == tuple(want)
        assert Path(rec["items_dir"], "mmlu.jsonl").is_file()
    base = json.loads((d / "base" / "result.json").read_text())
    assert base["eval"]["mmlu"]["score"] == 0.5 and base["finetune"] == {}
    assert json.loads((d / "study.json").read_text())["control_seeds"] == [123, 124]
    assert (d / "report" / "report.md").is_file()
    prog = json.loads((d / "progress.json").read_text())
    assert {r["trial_id"]: r["state"] for r in prog["trials"]} == {t: "DONE" for t in TRIALS}


def test_the_model_is_resolved_once_and_other_weights_are_refused(study):
    """The driver resolves the model once (fingerprint, shape) into model.json; every trial's hash uses that
    fingerprint; a study whose weights changed under the same name is refused before anything runs."""
    d = study["dir"]
    assert study["resolutions"] == 1
    m = json.loads((d / "model.json").read_text())
    ref = resolve_model_ref("tiny-gqa")
    assert (m["fingerprint"], m["hash_key"], m["shape"]["num_layers"]) == (ref.fingerprint, "fingerprint", 4)
    plan = json.loads((d / "plan.json").read_text())["trials"]
    from coloc_ray.ablation import spine

    sections = {k: {n: v for n, v in study["cfg"].resolved()[k].items() if not spine._free(f"{k}.{n}")}
                for k in ("training", "evaluation")}
    assert all(t["config_hash"] == spine._spec_hash(t, ref.fingerprint, sections) for t in plan)
    (d / "model.json").write_text(json.dumps({**m, "fingerprint": "0" * 64}))  # the checkpoint changed
    try:
        study["fakes"].DRIVER_CALLS.clear()
        with pytest.raises(UserError, match="now has weights"):
            run_study(study["cfg"], stages=study["fakes"].stages(), echo=False)
        assert dict(study["fakes"].DRIVER_CALLS) == {}
    finally:
        (d / "model.json").write_text(json.dumps(m))


def test_two_trials_at_a_time_and_a_failed_trial_retried(study):
    calls = _calls(study)
    ok = [c for c in calls if c[3] == "OK"]
    assert sorted(c[0] for c in ok) == sorted(TRIALS - {"base"})  # each fine-tune finished exactly once
    assert [c[0] for c in calls if c[3] == "FAILED"] == ["B-c123-t0"]
    assert _peak([(s, e) for _, s, e, _ in ok]) <= 2
    # whole trials (first start in attempts.log -> result.json written): 2 at once, never 3
    d = study["dir"]
    spans = []
    for tid in TRIALS:
        tdir = d / ("base" if tid == "base" else f"trials/{tid}")
        start = float((tdir / "attempts.log").read_text().split()[0])
        spans.append((start, (tdir / "result.json").stat().st_mtime))
    assert _peak(spans) == 2


def _peak(spans) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    live = peak = 0
    for _, step in events:
        live += step
        peak = max(peak, live)
    return peak


def test_one_finished_mlflow_child_per_trial(study):
    d, cfg = study["dir"], study["cfg"]
    parent = (d / "mlflow_run_id").read_text().strip()
    kids = mlflow_children(cfg.tracking_uri, parent)
    assert sorted(r.info.run_name for r in kids) == sorted(TRIALS)
    assert {r.info.status for r in kids} == {"FINISHED"}
    for r in kids:
        rec = json.loads((d / ("base" if r.info.run_name == "base" else f"trials/{r.info.run_name}")
                          / "result.json").read_text())
        assert rec["mlflow_run_id"] == r.info.run_id
        assert json.loads(r.data.params["lora_layers"]) == rec["lora_layers"]
        assert r.data.metrics["mmlu/score"] == rec["eval"]["mmlu"]["score"]
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri=cfg.tracking_uri).get_run(parent).info.status == "FINISHED"


def test_rerun_skips_every_done_stage(study, caplog):
    fakes = study["fakes"]
    assert study["driver_calls"] == {"sensitivity": 1, "analysis": 1, "report": 1}
    n_calls = len(_calls(study))
    fakes.DRIVER_CALLS.clear()
    caplog.set_level("INFO", logger="coloc_ray.ablation.spine")
    run_study(study["cfg"], stages=fakes.stages(), echo=False)
    assert dict(fakes.DRIVER_CALLS) == {}
    assert len(_calls(study)) == n_calls
    assert "probes: output for config" in caplog.text and "skipping" in caplog.text
    # a changed analysis setting re-runs the analysis only (probes and trials depend on other keys)
    cfg2 = study["cfg"].model_copy(deep=True)
    cfg2.probes.n_perm = 300
    run_study(cfg2, stages=fakes.stages(), echo=False)
    assert dict(fakes.DRIVER_CALLS) == {"analysis": 1}
    assert len(_calls(study)) == n_calls


def test_finished_trials_from_another_config_are_refused(study):
    cfg2 = study["cfg"].model_copy(deep=True)
    cfg2.training.lr = 1e-3
    with pytest.raises(UserError, match="another study config"):
        run_study(cfg2, stages=study["fakes"].stages(), echo=False)


def test_a_crash_inside_tune_becomes_an_incomplete_study(ray_local, fakes_by_value, tmp_path, monkeypatch):
    from ray import tune

    from coloc_ray.ablation.progress import ProgressBoard
    from coloc_ray.ablation.spine import StudyIncomplete
    from coloc_ray.ablation.tune_trials import run_trials

    def boom(self):
        raise RuntimeError("2 worker(s) were killed due to the node running low on memory")

    monkeypatch.setattr(tune.Tuner, "fit", boom)
    cfg = StudyConfig.model_validate(tiny_study_dict(tmp_path, arms=["A"]))
    spec = {"trial_id": "A-t0", "arm": "A", "control_seed": None, "train_seed": 0, "lora_layers": [2, 3],
            "garfa_layers": [2, 3]}
    board = ProgressBoard(tmp_path, [spec], 2, echo=False)
    from coloc_ray.ablation.trial import TrialContext

    ctx = TrialContext(study=cfg, storage=str(tmp_path / "study"))
    status = run_trials([spec], ctx, fakes_by_value.stages(), board=board,
                        storage_path=tmp_path / "tune", name="crash", max_concurrent=1, max_failures=0)
    assert status == {"A-t0": "ERROR: Tune stopped (RuntimeError)"}
    with pytest.raises(StudyIncomplete, match="coloc resume"):
        run_study(cfg, stages=fakes_by_value.stages(), echo=False)


def test_truncated_result_is_rerun_and_a_report_without_it_says_incomplete(study):
    """A truncated trials/<id>/result.json is not 'done': `coloc report` marks the report INCOMPLETE at its top
    and exits 1; `coloc resume` runs that trial (only that one) again and the report is rebuilt whole.
    (Last in this file: it changes the shared study.)"""
    from coloc_ray.report.build import build_report
    from tests.conftest import run_cli

    d = study["dir"]
    res_file = d / "trials" / "A-t0" / "result.json"
    res_file.write_text(res_file.read_text()[:40])  # a crash mid-write on a filesystem without atomic rename
    res = build_report(d)
    assert res["incomplete"] == ["A-t0"] and res["headline"].startswith("INCOMPLETE")
    assert (d / "report" / "report.md").read_text().count("INCOMPLETE") >= 2  # headline and problems
    r = run_cli("report", str(d))
    assert r.returncode == 1 and "incomplete" in r.stderr
    before = [c for c in _calls(study) if c[0] == "A-t0"]
    run_study(study["cfg"], stages=study["fakes"].stages(), echo=False)
    after = [c for c in _calls(study) if c[0] == "A-t0"]
    assert len(after) == len(before) + 1 and len(_calls(study)) == len(study["fakes"].read_calls(
        study["tmp"] / "calls.log"))
    assert json.loads(res_file.read_text())["trial_id"] == "A-t0"
    assert not build_report(d)["incomplete"]
