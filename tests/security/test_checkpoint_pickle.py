"""Checkpoints are read with torch.load(weights_only=True): resume round-trips, a planted pickle runs no code."""

from __future__ import annotations

import pytest
import torch

from coloc_ray.finetune import state as st


class _Payload:
    """Unpickling this runs ``Path(marker).touch()`` (what a tampered state.pt could do with any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _tiny_training():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def test_resume_state_round_trips_with_weights_only(tmp_path):
    model, opt, sched = _tiny_training()
    st.save_state(tmp_path, model, opt, sched, st.LoopState(step=3, micro=6, train_losses=[1.0, 0.5]))
    expect_rng = torch.get_rng_state()
    m2, o2, s2 = _tiny_training()
    torch.manual_seed(123)
    loop = st.load_state(tmp_path, m2, o2, s2)
    assert loop.step == 3 and loop.train_losses == [1.0, 0.5]
    assert torch.equal(torch.get_rng_state(), expect_rng)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), m2.parameters()))
    assert s2.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"]
    assert torch.equal(o2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_planted_pickle_in_a_checkpoint_runs_no_code(tmp_path):
    model, opt, sched = _tiny_training()
    st.save_state(tmp_path, model, opt, sched, st.LoopState(step=3))
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Payload(marker)}, tmp_path / st.STATE)
    with pytest.raises(RuntimeError, match="corrupt or holds more than tensors"):
        st.load_state(tmp_path, *_tiny_training())
    assert not marker.exists()
    torch.load(tmp_path / st.STATE, weights_only=False)  # the control: the old way runs the payload
    assert marker.exists()


def test_truncated_state_file_is_named(tmp_path):
    model, opt, sched = _tiny_training()
    st.save_state(tmp_path, model, opt, sched, st.LoopState(step=3))
    blob = (tmp_path / st.STATE).read_bytes()
    (tmp_path / st.STATE).write_bytes(blob[: len(blob) // 3])
    with pytest.raises(RuntimeError, match="state.pt is corrupt"):
        st.load_state(tmp_path, *_tiny_training())
