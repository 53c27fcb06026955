"""The real stages end to end on the tiny model: probes, analysis, LS-LoRA + GARFA on Ray Train inside a
Tune trial, evaluation, report. Slow (real fine-tune and lm-eval), so one arm and the base model only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coloc_ray.ablation.spine import run_study
from coloc_ray.ablation.study_config import StudyConfig
from coloc_ray.models.ref import RESOLUTIONS
from tests.ablation.conftest import mlflow_children, tiny_study_dict

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_real_stages_tiny_study(ray_local, tmp_path):
    d = tiny_study_dict(tmp_path, arms=["A"], control_seeds=[123])
    cfg = StudyConfig.model_validate(d)
    before = RESOLUTIONS["tiny-gqa"]
    out = run_study(cfg, echo=False)
    study = Path(out["study_dir"])
    # one resolution of the model on the driver, though its probes loaded it here: they got the reference
    assert RESOLUTIONS["tiny-gqa"] - before == 1
    fp = json.loads((study / "model.json").read_text())["fingerprint"]
    sens = json.loads((study / "probes" / "sensitivity.json").read_text())
    sets = json.loads((study / "layersets.json").read_text())
    # S is the top-k of the real sensitivity profile (independent re-ranking), R avoids it
    ranked = sorted(range(len(sens["scores"])), key=lambda i: (-sens["scores"][i], i))[:2]
    assert sets["S"] == sorted(ranked) and not set(sets["R"]["123"]) & set(sets["S"])
    rec = json.loads((study / "trials" / "A-t0" / "result.json").read_text())
    assert rec["lora_layers"] == rec["garfa_layers"] == sets["S"]
    assert rec["finetune"]["steps"] == 2 and isinstance(rec["finetune"]["final_train_loss"], float)
    adapter = Path(rec["adapter_dir"])
    assert (adapter / "adapter_config.json").is_file() and (adapter / "garfa.json").is_file()
    assert json.loads((adapter / "model_info.json").read_text())["fingerprint"] == fp  # the same weights trained
    assert json.loads((study / "probes" / "sensitivity.json").read_text())["model_fingerprint"] == fp
    assert set(rec["eval"]) == {"arc_challenge", "mmlu"}
    assert (study / "base" / "eval" / "eval.json").is_file()
    assert (study / "report" / "report.md").is_file()
    # Ray Train's checkpoints live in the study storage (a retry elsewhere resumes from there), not in the
    # trial's node scratch; the trial's log is kept there too; the workers and the evaluation say where they ran.
    assert list((study / "train").glob("A-t0-finetune/checkpoint_*"))
    assert list((study / "logs" / "trials" / "A-t0").glob("*.log"))
    acc = rec["accelerators"]
    assert [w["rank"] for w in acc["finetune"]] == [0] and acc["finetune"][0]["node_id"] == acc["eval"]["node_id"]
    assert acc["finetune"][0]["gpu_ids"] == [] and rec["attempt"] == 1
    # the FLOPs estimate from the driver's parameter counts of the model (the trial node does not re-read it)
    from coloc_ray.ablation.cost import finetune_flops, model_params

    blocks, head = model_params("tiny-gqa")
    n_train = rec["finetune"]["lora_params"] + rec["finetune"]["garfa_params"]
    assert rec["cost"]["finetune_flops"] == finetune_flops(rec["finetune"]["tokens"], list(blocks), head, n_train,
                                                           sets["S"])["flops"] > 0
    kids = mlflow_children(cfg.tracking_uri, (study / "mlflow_run_id").read_text().strip())
    names = {k.info.run_name for k in kids}
    assert {"base", "A-t0"} <= names
    assert all(k.info.status == "FINISHED" for k in kids if k.info.run_name in ("base", "A-t0"))
