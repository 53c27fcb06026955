"""Per-trial cost accounting (``result.json`` ``cost``) and the report's cost table, against direct computations."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from coloc_ray.ablation.cost import model_params, trial_cost
from coloc_ray.ablation.stages import Stages
from coloc_ray.ablation.study_config import StudyConfig
from coloc_ray.ablation.trial import TrialContext, run_trial
from coloc_ray.report.build import compute_results
from coloc_ray.report.cost import md_cost
from tests.report.conftest import RATE, build_study

T = 12_345  # tokens trained


def _hand_flops(model, tokens: int, lowest: int) -> tuple[int, int]:
    """(FLOPs, trainable count) from the adapted model's own named_parameters: 2 T N_all (every parameter a
    token's forward multiplies: not the embedding lookup, but a tied LM head counts) + 2 T N_frozen at or above
    the lowest adapted layer (the backward stops there) + 4 T N_trainable."""
    n_all = n_from = n_train = 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name:
            continue
        m = re.search(r"\.layers\.(\d+)\.", name)
        n_all += p.numel()
        if p.requires_grad:
            n_train += p.numel()
        elif m is None or int(m.group(1)) >= lowest:
            n_from += p.numel()
    cfg = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    if getattr(cfg, "tie_word_embeddings", False):  # named_parameters lists the shared weight once
        head = cfg.vocab_size * cfg.hidden_size
        n_all, n_from = n_all + head, n_from + head
    return 2 * tokens * n_all + 2 * tokens * n_from + 4 * tokens * n_train, n_train


@pytest.mark.parametrize("model, lora, garfa", [("tiny-gqa", [2, 3], [1]), ("tiny-gqa", [0], []),
                                                ("tiny-gemma2", [3], [2, 3])])
def test_finetune_flops_match_a_hand_count(model, lora, garfa):
    from coloc_ray.finetune.config import FinetuneConfig
    from coloc_ray.finetune.lora import build_trainable, trainable_counts

    tm = build_trainable(FinetuneConfig(model=model, lora_layers=lora, garfa_layers=garfa, quant="none"))
    want, n_train = _hand_flops(tm.model, T, min(lora + garfa))
    counts = trainable_counts(tm.model)
    assert sum(counts.values()) == n_train
    spec = {"arm": "A", "lora_layers": lora, "garfa_layers": garfa}
    got = trial_cost(spec, {"model": model}, {"tokens": T, **counts}, 1.0, {}, None, {}, model_params(model))
    assert got["finetune_flops"] == want
    assert got["flops_terms"]["lowest_adapted_layer"] == min(lora + garfa)


def test_late_layers_cost_fewer_flops_than_early_ones():
    def flops(layers):
        ft = {"tokens": T, "lora_params": 1000, "garfa_params": 0}
        return trial_cost({"arm": "A", "lora_layers": layers, "garfa_layers": []}, {"model": "tiny-gqa"}, ft, 1.0,
                          {}, None, {}, model_params("tiny-gqa"))["finetune_flops"]

    assert flops([3]) < flops([2]) < flops([1]) < flops([0])


# -- a trial records its cost -------------------------------------------------------------------------
RUN = {"wall_s": 12.0, "cpu_s": 30.5, "gpus": 1, "gpu_s": 12.0, "new_tokens": 99}
NEW_TOKENS = {"math": 70, "mmlu": 0, "mgsm": 29}
LORA_PARAMS, GARFA_PARAMS = 2048, 4


def _finetune(cfg, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return {"steps": 3, "tokens": T, "num_workers": 2, "lora_params": LORA_PARAMS, "garfa_params": GARFA_PARAMS}


def _evaluate(cfg, out: Path, tracker) -> dict:
    (out / "items").mkdir(parents=True, exist_ok=True)
    ev = {b: {"score": 0.5, "n": 1, "new_tokens": n} for b, n in NEW_TOKENS.items()}
    (out / "eval.json").write_text(json.dumps(ev))
    (out / "eval_config.json").write_text(json.dumps({"run": RUN}))
    return ev


def _stages() -> Stages:
    def no(*a, **kw):
        raise AssertionError("not a trial stage")

    return Stages(sensitivity=no, rope_influence=no, analysis=no, finetune=_finetune, evaluate=_evaluate, report=no)


@pytest.mark.parametrize("arm", ["A", "base"])
def test_trial_records_its_cost(tmp_path, arm):
    resources = {"workers_per_trial": 2, "gpus_per_worker": 0.5, "cpus_per_worker": 1.5}
    study = StudyConfig.model_validate({"name": "s", "model": "tiny-gqa", "resources": resources})
    ctx = TrialContext(study=study, storage=str(tmp_path), tracking=False)
    spec = {"trial_id": "A-t0" if arm == "A" else "base", "arm": arm, "control_seed": None, "train_seed": 0,
            "lora_layers": [2, 3] if arm == "A" else [], "garfa_layers": [2, 3] if arm == "A" else []}
    run_trial(spec, ctx, _stages())
    rel = "base" if arm == "base" else "trials/A-t0"
    c = json.loads((tmp_path / rel / "result.json").read_text())["cost"]
    assert (c["eval_wall_s"], c["eval_gpu_s"], c["eval_cpu_s"]) == (12.0, 12.0, 30.5)  # the run record's
    assert c["tokens_generated"] == sum(NEW_TOKENS.values())
    if arm == "base":
        assert c["finetune_wall_s"] == c["finetune_gpu_s"] == c["tokens_trained"] == c["finetune_flops"] == 0
        return
    wall = c["finetune_wall_s"]
    assert c["finetune_gpu_s"] == pytest.approx(2 * 0.5 * wall, abs=2e-3)
    assert c["finetune_cpu_s"] == pytest.approx(2 * 1.5 * wall, abs=2e-3)
    assert c["tokens_trained"] == T
    from coloc_ray.models.params import param_counts

    blocks, head = param_counts("tiny-gqa")
    n_tr = LORA_PARAMS + GARFA_PARAMS
    n_all, n_from = sum(blocks) + head + n_tr, sum(blocks[2:]) + head
    assert c["finetune_flops"] == 2 * T * n_all + 2 * T * n_from + 4 * T * n_tr


# -- the report's cost table ----------------------------------------------------------------------------
def _known_cost(i: int, gpu: bool) -> dict:
    """Distinct known numbers per trial (i = position), so a sum over the wrong runs cannot match."""
    return {"finetune_wall_s": 100.0 + i, "finetune_gpu_s": (200.0 + 10 * i) if gpu else 0.0,
            "finetune_cpu_s": 400.0 + 3 * i, "eval_wall_s": 50.0 + i, "eval_gpu_s": (60.0 + i) if gpu else 0.0,
            "eval_cpu_s": 90.0 + 2 * i, "tokens_trained": 1000 * (i + 1), "tokens_generated": 7 * i + 3,
            "finetune_flops": 3.0e11 * (i + 1)}


def _synthetic(tmp_path: Path, gpu: bool, legacy: str | None) -> tuple[Path, dict[str, list[dict]]]:
    """The report tests' synthetic study with a known ``cost`` in every result.json but ``legacy``'s."""
    study = build_study(tmp_path / "study")
    by_arm: dict[str, list[dict]] = {}
    paths = [study / "base" / "result.json", *sorted((study / "trials").glob("*/result.json"))]
    for i, p in enumerate(paths):
        rec = json.loads(p.read_text())
        if rec["trial_id"] != legacy:
            rec["cost"] = _known_cost(i, gpu)
            if rec["arm"] == "base":
                rec["cost"].update(finetune_wall_s=0.0, finetune_gpu_s=0.0, finetune_cpu_s=0.0, tokens_trained=0,
                                   finetune_flops=0)
        if not gpu:
            rec["gpu_hours"] = 0.0
        p.write_text(json.dumps(rec))
        by_arm.setdefault(rec["arm"], []).append(rec)
    return study, by_arm


def _direct(recs: list[dict], field: str):
    vals = [r.get("cost", {}).get(field) for r in recs]
    return None if None in vals else sum(vals)


def test_report_cost_table_sums_the_records(tmp_path):
    legacy = "B-c124-t1"
    study, by_arm = _synthetic(tmp_path, gpu=True, legacy=legacy)
    cost = compute_results(study)["cost"]
    assert list(cost["per_arm"]) == ["base", "A", "B", "C", "D"]
    for arm, recs in by_arm.items():
        row = cost["per_arm"][arm]
        assert row["runs"] == len(recs)
        for out_key, field, scale in [("finetune_gpu_hours", "finetune_gpu_s", 3600),
                                      ("eval_gpu_hours", "eval_gpu_s", 3600), ("tokens_trained", "tokens_trained", 1),
                                      ("tokens_generated", "tokens_generated", 1),
                                      ("finetune_tflops", "finetune_flops", 1e12)]:
            want = _direct(recs, field)
            assert row[out_key] == (None if want is None else pytest.approx(want / scale)), (arm, out_key)
        # total GPU-hours: fine-tune + eval, or the legacy record's own gpu_hours
        gh = sum(r["gpu_hours"] if "cost" not in r else
                 (r["cost"]["finetune_gpu_s"] + r["cost"]["eval_gpu_s"]) / 3600 for r in recs)
        assert row["gpu_hours"] == pytest.approx(gh) and row["cost"] == pytest.approx(gh * RATE)
        assert row["wall_s"] == pytest.approx(sum(r["wall_s"] for r in recs))
    assert cost["per_arm"]["B"]["finetune_gpu_hours"] is None  # the legacy trial makes B's split n/a
    all_recs = [r for rs in by_arm.values() for r in rs]
    assert cost["total"]["gpu_hours"] == pytest.approx(sum(v["gpu_hours"] for v in cost["per_arm"].values()))
    assert cost["total"]["tokens_trained"] is None and cost["total"]["runs"] == len(all_recs)
    assert cost["legacy_runs"] == 1

    md = "\n".join(md_cost(cost))
    a = cost["per_arm"]["A"]
    a_row = next(ln for ln in md.splitlines() if ln.startswith("| A |"))
    cells = [x.strip() for x in a_row.strip("|").split("|")]
    assert cells == ["A", str(len(by_arm["A"])), f"{a['finetune_gpu_hours']:.3f}", f"{a['eval_gpu_hours']:.3f}",
                     f"{a['gpu_hours']:.3f}", f"${a['cost']:.2f}", f"{_direct(by_arm['A'], 'tokens_trained'):,}",
                     f"{_direct(by_arm['A'], 'tokens_generated'):.3g}",
                     f"{_direct(by_arm['A'], 'finetune_flops') / 1e12:.3g}", f"{a['wall_s'] / 3600:.2f}"]
    b_row = next(ln for ln in md.splitlines() if ln.startswith("| B |"))
    assert b_row.count("n/a") == 5 and "fine-tune GPU-h | eval GPU-h | total GPU-h" in md
    assert "1 run(s) recorded before per-trial cost accounting" in md


def test_cpu_study_shows_cpu_hours(tmp_path):
    study, by_arm = _synthetic(tmp_path, gpu=False, legacy=None)
    cost = compute_results(study)["cost"]
    assert cost["total"]["gpu_hours"] == 0 and cost["total"]["cost"] == 0
    for arm, recs in by_arm.items():
        row = cost["per_arm"][arm]
        assert row["finetune_cpu_hours"] == pytest.approx(_direct(recs, "finetune_cpu_s") / 3600)
        want = (_direct(recs, "finetune_cpu_s") + _direct(recs, "eval_cpu_s")) / 3600
        assert row["cpu_hours"] == pytest.approx(want)
    md = "\n".join(md_cost(cost))
    assert "| Arm | runs | GPU-h | fine-tune CPU-h | eval CPU-h | cost |" in md
    d_row = next(ln for ln in md.splitlines() if ln.startswith("| D |"))
    d = cost["per_arm"]["D"]
    assert f"| 0 | {d['finetune_cpu_hours']:.3f} | {d['eval_cpu_hours']:.3f} |" in d_row
    assert "No GPU was used (CPU run)" in md and "n/a" not in md
