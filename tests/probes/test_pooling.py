"""The pooling registry: each shipped pooling against a naive per-sequence reference, and a pooling registered
once is accepted by the probe API, the CLI check and the study file; an unknown name is one line with the names."""

from __future__ import annotations

import statistics

import pytest
import torch

from coloc_ray.errors import UserError
from coloc_ray.probes import pooling as pl
from coloc_ray.probes.checks import check_pooling
from coloc_ray.probes.sensitivity import pool


def _batch():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    h[1, 2] *= 50.0  # an attention sink inside sequence 1
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    return h, mask


def _naive(h, mask, name, sink_multiple=10.0):
    rows = []
    for b in range(h.shape[0]):
        n = int(mask[b].sum())
        toks = h[b, :n]
        if name == "mean":
            rows.append(toks.mean(0))
        elif name == "last":
            rows.append(toks[-1])
        else:  # mean-nosink
            norms = [float(x) for x in toks.norm(dim=-1)]
            med = statistics.median(norms)  # interpolated for an even count
            keep = [t for t in range(1, n) if norms[t] <= sink_multiple * med]
            rows.append(toks[keep].mean(0) if keep else toks.mean(0))
    return torch.stack(rows)


def test_shipped_poolings_are_registered_in_order():
    assert list(pl.POOLINGS)[:3] == ["mean", "mean-nosink", "last"]  # the shipped three first
    assert all(p.description for p in pl.POOLINGS.values())


@pytest.mark.parametrize("name", ["mean", "mean-nosink", "last"])
def test_each_pooling_matches_a_naive_reference(name):
    h, mask = _batch()
    torch.testing.assert_close(pool(h, mask, name), _naive(h, mask, name))


def test_nosink_drops_the_sink():
    h, mask = _batch()
    assert not torch.allclose(pool(h, mask, "mean-nosink")[1], pool(h, mask, "mean")[1])


@pytest.fixture()
def toy_pooling(monkeypatch):
    """A made-up pooling (the max over real tokens) registered the documented way, removed after the test."""
    monkeypatch.setattr(pl, "POOLINGS", dict(pl.POOLINGS))
    monkeypatch.setattr("coloc_ray.probes.checks.POOLINGS", pl.POOLINGS)

    @pl.register_pooling("max", "elementwise max over the real tokens")
    def _max(h, m, sink_multiple):
        return h.masked_fill(~m.unsqueeze(-1), float("-inf")).max(dim=1).values

    return _max


def test_a_registered_pooling_is_accepted_everywhere(toy_pooling):
    from coloc_ray.ablation.study_config import StudyConfig

    h, mask = _batch()
    check_pooling("max", 10.0)
    assert StudyConfig(name="x", model="tiny-gqa", probes={"pooling": "max"}).probes.pooling == "max"
    torch.testing.assert_close(pool(h, mask, "max")[2], h[2, :2].max(0).values)


@pytest.mark.parametrize("call", [lambda: check_pooling("nope", 10.0), lambda: pool(*_batch(), "nope")])
def test_unknown_pooling_is_one_line_listing_the_valid_names(call):
    with pytest.raises(UserError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and "'nope'" in msg and all(n in msg for n in ("mean", "mean-nosink", "last"))


def test_unknown_pooling_in_a_study_lists_the_valid_names():
    from coloc_ray.ablation.study_config import schema_errors

    errs = schema_errors({"name": "x", "model": "tiny-gqa", "probes": {"pooling": "nope"}}, where="s.yaml")
    assert len(errs) == 1 and "probes.pooling" in errs[0] and "mean, mean-nosink, last" in errs[0]
