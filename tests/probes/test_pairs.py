"""Minimal-pairs loader: the shipped file, and every bad-file case through the real CLI (exit 2, one line)."""

from __future__ import annotations

import json
import os

import pytest

from coloc_ray.errors import UserError
from coloc_ray.probes.pairs import default_pairs_path, domains_of, load_pairs
from tests.conftest import run_cli

GOOD = {"id": "a", "domain": "math", "correct": "2 + 2 = 4", "incorrect": "2 + 2 = 5"}


def test_shipped_pairs_are_5_code_5_knowledge_5_math():
    pairs = load_pairs()
    assert default_pairs_path().is_file()
    assert len(pairs) == 15
    assert domains_of(pairs) == ["code", "knowledge", "math"]
    assert all(sum(p.domain == d for p in pairs) == 5 for d in ("code", "knowledge", "math"))
    assert len({p.id for p in pairs}) == 15
    assert any("s[::-1]" in p.correct and "s[1:]" in p.incorrect for p in pairs)


def _write(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


BAD_CASES = {
    # name: (lines, what the one-line error must mention)
    "missing-field": ([GOOD, {"id": "b", "domain": "math", "correct": "1"}], ["line 2", "'incorrect'"]),
    "empty-string": ([{**GOOD, "correct": "   "}], ["line 1", "'correct'", "empty"]),
    "non-string": ([GOOD, {**GOOD, "id": "c", "domain": 3}], ["line 2", "'domain'", "string"]),
    "non-json": ([GOOD, "{not json"], ["line 2", "JSON"]),
    "not-object": ([GOOD, "[1, 2]"], ["line 2", "object"]),
    "duplicate-id": ([GOOD, {**GOOD, "correct": "3 + 3 = 6"}, {**GOOD}], ["line 2", "duplicate id 'a'", "line 1"]),
    "same-texts": ([{**GOOD, "incorrect": GOOD["correct"]}], ["line 1", "same text"]),
    "empty-file": ([], ["empty"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_pairs_file_exits_2_with_one_line_and_writes_nothing(case, tmp_path):
    lines, needles = BAD_CASES[case]
    f = _write(tmp_path / "pairs.jsonl", lines)
    out = tmp_path / "out"
    r = run_cli("probe", "sensitivity", "--model", "tiny-gqa", "--pairs", str(f), "--num-workers", "0",
                "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("coloc: error: --pairs"), r.stderr
    assert str(f) in err[0]
    for n in needles:
        assert n in err[0], (n, err[0])
    # Nothing written: no output dir, no MLflow store in the working directory.
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["pairs.jsonl"]


def test_missing_pairs_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_pairs(tmp_path / "nope.jsonl")


def test_blank_lines_are_skipped_and_line_numbers_count_them(tmp_path):
    f = _write(tmp_path / "p.jsonl", [GOOD, "", {"id": "b", "domain": "x"}])
    with pytest.raises(UserError, match="line 3"):
        load_pairs(f)
    f = _write(tmp_path / "q.jsonl", ["", GOOD, ""])
    assert [p.id for p in load_pairs(f)] == ["a"]
