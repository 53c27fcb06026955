"""The fine-tune's live progress file: rank 0 rewrites it on every progress line, and callers find it.

No Ray: the loop runs bare on tiny-gqa (the Ray worker only hands the path to this same loop).
"""

from __future__ import annotations

import copy
import json

import pytest

from coloc_ray.finetune import ray_worker
from coloc_ray.finetune.bare import prepare
from coloc_ray.finetune.loop import Loop


def test_loop_writes_each_log_step(tmp_path, small_cfg, monkeypatch):
    import coloc_ray.io

    cfg = small_cfg(max_steps=6, log_every=2, eval_every=100, checkpoint_every=100)
    path = tmp_path / "run" / "progress.json"
    writes, real = [], coloc_ray.io.write_json

    def spy(p, obj):  # every version of the file, not just the last one
        if str(p) == str(path):
            writes.append(copy.deepcopy(obj))
        return real(p, obj)

    monkeypatch.setattr(coloc_ray.io, "write_json", spy)
    prep = prepare(cfg)
    tm = prep.trainable
    loop = Loop(tm.model, tm.scalers, prep.train_items, prep.held_items, cfg, tm.tokenizer.pad_token_id,
                progress_path=str(path), progress_info={"node_id": "n-1"})
    assert not path.exists()
    loop.run()
    assert [w["step"] for w in writes] == [2, 4, 6]  # the log steps, in order, ending at max_steps
    for w in writes:
        assert w["max_steps"] == 6
        assert w["loss"] == pytest.approx(loop.state.train_losses[w["step"] - 1], rel=1e-12)
        assert w["tokens_per_s"] > 0 and w["eta_s"] >= 0
        assert w["node_id"] == "n-1"  # the Ray worker's node, carried to the study's progress board
    assert writes[-1]["eta_s"] == 0
    assert writes[0]["updated"] <= writes[-1]["updated"]
    assert json.loads(path.read_text()) == pytest.approx(writes[-1])  # the file holds the last line
    # A write that fails (parent is a file) only warns: training must not stop for the live view.
    loop.progress_path = str(path / "nested.json")
    loop._write_progress({"loss": 1.0, "tokens_per_s": 1.0}, 0.0)


def test_no_path_no_file(tmp_path, small_cfg):
    cfg = small_cfg(max_steps=2, log_every=1, eval_every=100, checkpoint_every=100)
    prep = prepare(cfg)
    tm = prep.trainable
    Loop(tm.model, tm.scalers, prep.train_items, prep.held_items, cfg, tm.tokenizer.pad_token_id).run()
    assert list(tmp_path.rglob("progress.json")) == []


@pytest.mark.parametrize("over", [{"run_name": "A-t0/finetune"}, {}, {"storage_path": "elsewhere/ray"}])
def test_progress_file_matches_run_finetune(tmp_path, small_cfg, monkeypatch, over):
    """progress_file(cfg, out) mirrors run_finetune's storage and run name: catch the two drifting apart."""
    import coloc_ray.raycluster
    from coloc_ray.finetune.api import run_finetune

    monkeypatch.chdir(tmp_path)
    cfg = small_cfg(**over)
    seen = {}

    class Stop(Exception):
        pass

    def fake_build_trainer(cfg, storage_path, name, *a, **k):
        seen["file"] = ray_worker.run_progress_file(storage_path, name)
        raise Stop

    monkeypatch.setattr(coloc_ray.raycluster, "ensure_ray", lambda address=None: None)
    monkeypatch.setattr(ray_worker, "build_trainer", fake_build_trainer)
    with pytest.raises(Stop):
        run_finetune(cfg, tmp_path / "out")
    assert str(ray_worker.progress_file(cfg, tmp_path / "out")) == seen["file"]
    assert seen["file"].endswith("/progress.json")


def test_remote_storage_keeps_its_live_file_there():
    """With the study storage in a bucket the live file is an object beside the run's checkpoints (io.write_json
    and read_json take URIs; tests/cluster/test_storage.py writes and reads one on an S3 server)."""
    assert ray_worker.run_progress_file("s3://bucket/runs/", "x") == "s3://bucket/runs/x/progress.json"
