"""Progress board: rows follow trial events, progress.json round-trips into the same table, ETA is sane."""

from __future__ import annotations

import json

from coloc_ray.ablation.progress import ProgressBoard, render_progress


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
