"""Progress board: rows follow trial events, progress.json round-trips into the same table, ETA is sane."""

from __future__ import annotations

import dataclasses
import json
import threading
import types

import pytest

from coloc_ray.ablation.progress import FileWatcher, ProgressBoard, render_progress


def _specs():
    return [{"trial_id": "base", "arm": "base", "control_seed": None, "train_seed": 0},
            {"trial_id": "A-t0", "arm": "A", "control_seed": None, "train_seed": 0},
            {"trial_id": "D-c123-t0", "arm": "D", "control_seed": 123, "train_seed": 0}]


def test_board_writes_and_renders(tmp_path, capsys, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("coloc_ray.ablation.progress.time.time", lambda: now[0])
    b = ProgressBoard(tmp_path, _specs(), total_steps=10, slots=2, min_interval_s=0)
    b.update("base", state="RUNNING")
    b.update("A-t0", state="RUNNING")
    now[0] = 1010.0
    b.update("base", state="DONE", phase="done")  # base took 10 s
    b.update("A-t0", phase="finetune", step=5, loss=1.25)
    b.flush()
    snap = json.loads((tmp_path / "progress.json").read_text())
    rows = {r["trial_id"]: r for r in snap["trials"]}
    assert rows["base"]["wall_s"] == 10.0 and rows["base"]["state"] == "DONE"
    assert rows["A-t0"]["eta_s"] == 10.0  # 5 of 10 steps in 10 s -> 10 s to go
    assert rows["D-c123-t0"]["eta_s"] == 10.0  # pending: the mean finished trial time
    assert snap["eta_s"] == 10.0  # (10 + 10) / 2 slots
    assert snap["counts"] == {"DONE": 1, "RUNNING": 1, "PENDING": 1}
    table = render_progress(tmp_path)
    printed = capsys.readouterr().out
    assert table in printed
    assert "A-t0" in table and "5/10" in table and "1.2500" in table and "D-c123-t0" in table
    # unchanged board: nothing printed again
    b.flush()
    assert capsys.readouterr().out == ""


def test_render_without_progress(tmp_path):
    assert "no progress yet" in render_progress(tmp_path)


def test_unknown_trial_ignored(tmp_path):
    b = ProgressBoard(tmp_path, _specs(), total_steps=1, echo=False)
    b.update("nope", state="RUNNING")
    b.flush(force=True)
    assert {r["trial_id"] for r in json.loads((tmp_path / "progress.json").read_text())["trials"]} == \
        {"base", "A-t0", "D-c123-t0"}


def _live_file(path, step, loss, eta_s):
    from coloc_ray.io import write_json

    write_json(path, {"step": step, "max_steps": 10, "loss": loss, "tokens_per_s": 100.0, "eta_s": eta_s,
                      "updated": 0.0, "node_id": f"node-{step}"})


def test_watcher_feeds_step_loss_eta_into_table(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("coloc_ray.ablation.progress.time.time", lambda: now[0])
    live, seen = tmp_path / "ft" / "progress.json", []
    w = FileWatcher(live, seen.append)
    assert w.poll() is None and seen == []  # no file yet: nothing reported, no error
    live.parent.mkdir()
    live.write_text("{not json")  # unreadable: skipped like a missing file
    assert w.poll() is None
    _live_file(live, 3, 0.75, 70.0)
    assert w.poll()["step"] == 3 and w.poll() is None  # same step: reported once
    _live_file(live, 6, 0.5, 40.0)
    w.poll()
    assert [(m["phase"], m["step"], m["loss"], m["eta_s"]) for m in seen] == \
        [("finetune", 3, 0.75, 70.0), ("finetune", 6, 0.5, 40.0)]
    assert [m["node_id"] for m in seen] == ["node-3", "node-6"]  # where rank 0 trains: a lost node is named
    b = ProgressBoard(tmp_path, _specs(), total_steps=10, echo=False, min_interval_s=0)
    b.update("A-t0", state="RUNNING")
    now[0] = 1100.0  # 100 s of startup: the step rate alone would say 100/6*4 = 67 s left
    b.update("A-t0", **seen[-1])
    now[0] = 1110.0  # 10 s after the report: 40 - 10 = 30 s left
    b.flush()
    row = [r for r in json.loads((tmp_path / "progress.json").read_text())["trials"] if r["trial_id"] == "A-t0"][0]
    assert row["step"] == 6 and row["loss"] == 0.5 and row["eta_s"] == 30.0
    line = [ln for ln in render_progress(tmp_path).splitlines() if ln.startswith("A-t0")][0]
    assert "finetune" in line and "6/10" in line and "0.5000" in line and "30s" in line
    b.update("A-t0", phase="eval", step=10, loss=0.4)  # a report without the fine-tune's ETA drops it
    assert b.rows["A-t0"]["ft_eta_s"] is None


def _no_watcher_thread() -> bool:
    return not any(t.name == "coloc-ft-progress" for t in threading.enumerate())


_SPEC = {"trial_id": "A-t0", "arm": "A", "control_seed": None, "train_seed": 0, "lora_layers": [0],
         "garfa_layers": [1]}


def _ctx(tmp_path, **kw):
    from coloc_ray.ablation.study_config import StudyConfig
    from coloc_ray.ablation.trial import TrialContext

    return TrialContext(study=StudyConfig.model_validate({"name": "p", "model": "tiny-gqa"}), storage=str(tmp_path),
                        **kw)


@pytest.mark.parametrize("fail", [False, True])
def test_trial_relays_finetune_progress(tmp_path, fail):
    """The trial's watcher reports each step of the (blocking) fine-tune and stops when it returns or raises."""
    from coloc_ray.ablation import trial
    from tests.ablation import fakes

    live, reports, got = tmp_path / "live.json", [], threading.Event()

    def report(m):
        reports.append(dict(m))
        if m.get("step"):
            got.set()

    def finetune(cfg, out):
        for step in (4, 8):
            got.clear()
            _live_file(live, step, 1.0 / step, 10.0 - step)
            assert got.wait(10), "the watcher never reported the step"
        if fail:
            raise RuntimeError("injected")
        return {"steps": 8}

    stages = dataclasses.replace(fakes.stages(), finetune=finetune, finetune_progress=lambda cfg, out: live)
    spec = _SPEC
    tracker = types.SimpleNamespace(enabled=False, run_id=None)
    ctx = _ctx(tmp_path, progress_interval_s=0.01)
    if fail:
        with pytest.raises(RuntimeError, match="injected"):
            trial._finetune(spec, ctx, stages, tmp_path, tracker, report)
    else:
        assert trial._finetune(spec, ctx, stages, tmp_path, tracker, report) == {"steps": 8}
    assert _no_watcher_thread()
    assert [(m["step"], m.get("loss")) for m in reports] == [(0, None), (4, 0.25), (8, 0.125)]
    assert [m["eta_s"] for m in reports[1:]] == [6.0, 2.0]


def test_trial_without_live_file_runs_plain(tmp_path):
    from coloc_ray.ablation import trial
    from tests.ablation import fakes

    seen = []
    stages = dataclasses.replace(fakes.stages(), finetune=lambda cfg, out: seen.append(cfg) or {"steps": 1})
    assert stages.finetune_progress is None  # a Stages without a progress file
    tracker = types.SimpleNamespace(enabled=False, run_id=None)
    assert trial._finetune(_SPEC, _ctx(tmp_path), stages, tmp_path, tracker, lambda m: None) == {"steps": 1}
    assert seen[0].lora_layers == [0] and seen[0].model == "tiny-gqa"  # the trial's validated FinetuneConfig
    assert _no_watcher_thread()


def test_retries_show_in_the_table(tmp_path):
    """Tune's on_trial_recover -> RETRYING: the row's try column counts attempts, the footer the retries."""
    specs = [{"trial_id": "A-t0", "arm": "A", "control_seed": None, "train_seed": 0},
             {"trial_id": "D-c1-t0", "arm": "D", "control_seed": 1, "train_seed": 0}]
    board = ProgressBoard(tmp_path, specs, total_steps=8, echo=False)
    board.update("A-t0", state="RUNNING")
    board.update("A-t0", phase="finetune", step=3, ft_node_id="n1")
    assert board.rows["A-t0"]["ft_node_id"] == "n1"
    board.update("A-t0", state="RETRYING")
    assert board.rows["A-t0"]["ft_node_id"] is None  # the lost node is not where the retry runs
    board.update("A-t0", state="RUNNING")
    board.update("A-t0", state="RETRYING")
    board.flush(force=True)
    table = render_progress(tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("A-t0")).split()
    header = table.splitlines()[0].split()
    assert row[header.index("try")] == "3" and "2 retries" in table.splitlines()[-1]
    assert next(line for line in table.splitlines() if line.startswith("D-c1-t0")).split()[header.index("try")] == "1"
