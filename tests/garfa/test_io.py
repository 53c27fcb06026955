"""save_garfa / load_garfa: exact round trip, the file format contract, refusals."""

import json
import math

import pytest
import torch
from safetensors import safe_open

from coloc_ray.errors import UserError
from coloc_ray.garfa import apply_garfa, get_garfa, load_garfa, save_garfa
from coloc_ray.models import model_info
from tests.garfa.conftest import build_tiny_cfg, sharpen

RHO = torch.tensor([[0.25, -1.0], [1.75, 0.5]])


@pytest.fixture()
def saved(tiny_model, ids, tmp_path):
    """A patched tiny-gqa with nonzero rho saved to tmp_path; returns (dir, logits)."""
    model = sharpen(tiny_model("tiny-gqa", "sdpa"))
    scalers = apply_garfa(model, [1, 3])
    with torch.no_grad():
        scalers.rho.copy_(RHO)
        logits = model(ids).logits
    save_garfa(scalers, tmp_path, model_info(model, name="tiny-gqa"))
    return tmp_path, logits


def test_file_format_is_the_contract(saved):
    d, _ = saved
    meta = json.loads((d / "garfa.json").read_text())
    assert {k: meta[k] for k in ("format_version", "layers", "num_kv_heads", "head_dim", "num_layers", "model")} == {
        "format_version": 1, "layers": [1, 3], "num_kv_heads": 2, "head_dim": 16, "num_layers": 4, "model": "tiny-gqa"}
    assert meta["c"] == pytest.approx(math.log(4), rel=1e-12)
    want_alpha = [[math.exp(math.log(4) * math.tanh(r)) for r in row] for row in RHO.tolist()]
    torch.testing.assert_close(torch.tensor(meta["alpha"], dtype=torch.float64),
                               torch.tensor(want_alpha, dtype=torch.float64), rtol=1e-6, atol=0)
    with safe_open(str(d / "garfa.safetensors"), framework="pt") as f:
        assert list(f.keys()) == ["rho"]
        rho = f.get_tensor("rho")
    assert rho.dtype == torch.float32 and torch.equal(rho, RHO)


def test_round_trip_gives_identical_logits(saved, tiny_model, ids):
    d, logits = saved
    fresh = sharpen(tiny_model("tiny-gqa", "sdpa"))
    scalers = load_garfa(fresh, d)
    assert scalers.layers == (1, 3) and torch.equal(scalers.rho.detach(), RHO) and scalers.rho.requires_grad
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, logits)


@pytest.mark.parametrize("shape,key", [
    (dict(layers=3), "num_layers=4"),  # depth
    (dict(kv=4), "num_kv_heads=2"),
    (dict(hidden=128), "head_dim=16"),
])
def test_load_refuses_another_model_shape(saved, shape, key):
    d, _ = saved
    other = build_tiny_cfg("llama", **shape)
    with pytest.raises(UserError, match=f"made for a model with {key}"):
        load_garfa(other, d)
    assert get_garfa(other) is None


def _corrupt(d, what):
    if what == "missing_json":
        (d / "garfa.json").unlink()
    elif what == "missing_weights":
        (d / "garfa.safetensors").unlink()
    elif what == "truncated":
        data = (d / "garfa.safetensors").read_bytes()
        (d / "garfa.safetensors").write_bytes(data[: len(data) // 2])
    elif what == "bad_json":
        (d / "garfa.json").write_text("{not json")
    elif what == "wrong_shape":
        meta = json.loads((d / "garfa.json").read_text())
        meta["layers"] = [0, 1, 2]
        (d / "garfa.json").write_text(json.dumps(meta))
    elif what == "version":
        meta = json.loads((d / "garfa.json").read_text())
        meta["format_version"] = 99
        (d / "garfa.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("what,match", [
    ("missing_json", "garfa.json is missing"), ("missing_weights", "garfa.safetensors is missing"),
    ("truncated", "garfa.safetensors is corrupt"), ("bad_json", "garfa.json is corrupt"),
    ("wrong_shape", r"tensor 'rho' is \(2, 2\), expected finite \(3, 2\)"), ("version", "format_version 99"),
])
def test_load_refuses_missing_or_corrupt_files(saved, tiny_model, what, match):
    d, _ = saved
    _corrupt(d, what)
    model = tiny_model()
    with pytest.raises(UserError, match=match):
        load_garfa(model, d)
    assert get_garfa(model) is None
