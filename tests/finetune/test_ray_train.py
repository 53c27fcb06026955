"""Ray Train: a worker killed by PID resumes from the last checkpoint; 2-worker DDP with MLflow."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from coloc_ray.finetune.api import run_finetune
from coloc_ray.finetune.bare import run_bare

pytestmark = pytest.mark.ray


def _wait_for(path: Path, timeout: float, thread: threading.Thread) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert thread.is_alive(), "training ended before the fault point"
        assert time.time() < deadline, f"{path} not written in {timeout} s"
        time.sleep(0.5)


def test_killed_worker_resumes_from_last_checkpoint_and_matches_uninterrupted(ray_local, small_cfg, tmp_path):
    cfg = small_cfg(max_steps=10, checkpoint_every=4, max_failures=1, lora_dropout=0.2)
    pid_file, out, box = tmp_path / "worker.pid", tmp_path / "out", {}

    def target():
        try:
            box["metrics"] = run_finetune(cfg, out, fault={"pid_file": str(pid_file), "at_step": 6})
        except BaseException as e:  # surfaced by the assertion below
            box["error"] = e

    th = threading.Thread(target=target)
    th.start()
    _wait_for(pid_file, 300, th)  # rank 0 is now holding at step 6; step 4's checkpoint was reported before
    assert sorted(out.glob(".train/*/checkpoint_*/state.pt")), "no checkpoint on disk before the kill"
    # Ray's controller registers a reported checkpoint when it next polls the workers (every 2 s) and
    # records it in this snapshot; only a registered checkpoint is handed to the restarted group.
    deadline = time.time() + 60
    while not any("checkpoint_" in p.read_text() for p in out.glob(".train/*/checkpoint_manager_snapshot.json")):
        assert time.time() < deadline, "the controller never registered the step-4 checkpoint"
        time.sleep(0.5)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    th.join(timeout=600)
    assert not th.is_alive() and "error" not in box, box.get("error")
    m = box["metrics"]
    assert m["resumed_from"] == [4] and m["steps"] == 10
    # The uninterrupted reference: the same seed and config, one process, no Ray. The data order, LoRA init
    # and dropout stream are pure functions of the seed and position, both restored from the checkpoint,
    # and both runs use one intra-op thread, so CPU float ops run in the same order: the losses agree to
    # float32 round-off (1e-6 relative leaves room only for summation-order noise, not for a wrong batch,
    # a lost optimizer state or a replayed dropout mask, which move the loss by >1e-3 on this model).
    ref = run_bare(cfg)
    assert m["final_train_loss"] == pytest.approx(ref["final_train_loss"], rel=1e-6)
    assert m["train_losses"] == pytest.approx(ref["train_losses"], rel=1e-6)
    assert [e["loss"] for e in m["eval_losses"]] == pytest.approx([e["loss"] for e in ref["eval_losses"]], rel=1e-6)
    assert (out / "adapter_model.safetensors").is_file() and (out / "garfa.json").is_file()


def test_two_worker_ddp_run_logs_to_mlflow_and_loads(ray_local, small_cfg, tmp_path, tracking_uri):
    from coloc_ray.finetune.adapter import load_adapted
    from coloc_ray.models import load_model
    from coloc_ray.tracking import Tracker, read_run
    from coloc_ray.tracking.mlflow_run import metric_history

    parent = Tracker(tracking_uri, run_name="study").start()
    cfg = small_cfg(num_workers=2, max_steps=8, eval_every=4, tracking=True, tracking_uri=tracking_uri,
                    parent_run_id=parent.run_id)
    m = run_finetune(cfg, tmp_path / "out")
    parent.end()
    assert m["num_workers"] == 2 and m["steps"] == 8 and m["resumed_from"] == []
    assert m["eval_losses"][-1]["loss"] < m["eval_losses"][0]["loss"]
    run = read_run(m["mlflow_run_id"], tracking_uri)
    assert run["status"] == "FINISHED" and run["tags"]["mlflow.parentRunId"] == parent.run_id
    assert run["params"]["lora_params"] == str(m["lora_params"]) and run["params"]["garfa_params"] == "4"
    assert run["params"]["lora_layers"] == "[0, 2]" and run["params"]["garfa_layers"] == "[1, 3]"
    assert [s for s, _ in metric_history(m["mlflow_run_id"], "loss", tracking_uri)] == list(range(1, 9))
    for key in ("lr_lora", "lr_garfa", "grad_norm", "tokens_per_s", "alpha/L1_H0", "alpha/L3_H1"):
        assert len(metric_history(m["mlflow_run_id"], key, tracking_uri)) == 8, key
    lr = dict(metric_history(m["mlflow_run_id"], "lr_garfa", tracking_uri))
    lr_lora = dict(metric_history(m["mlflow_run_id"], "lr_lora", tracking_uri))
    assert lr[2] == pytest.approx(5 * lr_lora[2])
    assert [s for s, _ in metric_history(m["mlflow_run_id"], "eval_loss", tracking_uri)] == [0, 4, 8]
    assert "adapter" in run["artifacts"]
    restored = load_adapted(load_model("tiny-gqa").model, tmp_path / "out")
    assert restored.base_model.model.garfa_scalers.alpha().detach().tolist() == [
        m["alpha"]["L1"], m["alpha"]["L3"]]


def _descendant_listeners() -> set[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket listening in a process under this one (the local Ray's workers)."""
    import psutil

    pids = {p.pid for p in psutil.Process().children(recursive=True)}
    return {(c.pid, c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def test_two_worker_rendezvous_listens_on_the_node_address_only(ray_local, small_cfg, tmp_path):
    """Every port a two-worker fine-tune opens is on 127.0.0.1: with Ray Train's stock rendezvous, torch's
    TCPStore server listened on the wildcard address for the whole run (rendezvous.py binds it instead)."""
    import ray

    assert ray.util.get_node_ip_address() == "127.0.0.1"
    before, seen, box = _descendant_listeners(), set(), {}
    cfg = small_cfg(num_workers=2, max_steps=12, eval_every=6, checkpoint_every=6)

    def target():
        try:
            box["metrics"] = run_finetune(cfg, tmp_path / "out")
        except BaseException as e:  # surfaced below
            box["error"] = e

    th = threading.Thread(target=target)
    th.start()
    while th.is_alive():
        seen |= _descendant_listeners() - before
        time.sleep(0.2)
    th.join()
    assert "error" not in box, box.get("error")
    assert box["metrics"]["num_workers"] == 2
    assert seen, "no socket opened during the fine-tune was seen"
    wide = sorted(s for s in seen if s[1] not in ("127.0.0.1", "::ffff:127.0.0.1"))
    assert not wide, f"listening beyond 127.0.0.1 during a fine-tune: {wide}"
