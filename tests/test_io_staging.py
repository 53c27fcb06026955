"""Stage outputs appear whole: ``staged_dir`` swaps a folder in by rename; ``staged_output`` moves markers last."""

from __future__ import annotations

import os

import pytest

from coloc_ray.io import staged_dir, staged_output


def test_staged_dir_replaces_the_folder_whole(tmp_path):
    out = tmp_path / "probes"
    with staged_dir(out) as d:
        (d / "a.json").write_text("1")
        (d / ".done").write_text("h1")
    assert sorted(p.name for p in out.iterdir()) == [".done", "a.json"]
    with staged_dir(out) as d:  # a re-run with other outputs: nothing of the old folder survives
        (d / "b.json").write_text("2")
        (d / ".done").write_text("h2")
    assert sorted(p.name for p in out.iterdir()) == [".done", "b.json"] and (out / ".done").read_text() == "h2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probes"]  # no staging or old folder left behind


def test_staged_dir_failure_leaves_the_old_output(tmp_path):
    out = tmp_path / "analysis"
    with staged_dir(out) as d:
        (d / "analysis.json").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_dir(out) as d:
            (d / "analysis.json").write_text("half")
            raise RuntimeError("stage crashed")
    assert (out / "analysis.json").read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_staged_output_moves_markers_last(tmp_path, monkeypatch):
    """A crash while moving files into a shared output dir must not leave the marker over half the outputs."""
    moved, real = [], os.replace

    def spy(src, dst):
        moved.append(os.path.basename(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    with staged_output(tmp_path / "out") as d:
        for name in (".done", "a.json", "z.json"):
            (d / name).write_text(name)
    assert moved == ["a.json", "z.json", ".done"]
