"""`ruff check` (config in pyproject.toml's [tool.ruff]) is part of the test command, so CI lints every change."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import REPO

LINTED = ["coloc_ray", "tests", "bench", "jobs", "cluster"]


def test_ruff_check_is_clean():
    try:
        from ruff.__main__ import find_ruff_bin
    except ImportError:
        pytest.skip("ruff is not installed in this venv: run scripts/setup.sh (its dev extra pins ruff)")
    proc = subprocess.run([find_ruff_bin(), "check", "--no-cache", "--output-format", "concise", *LINTED],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"ruff check exit {proc.returncode} (fix these, `ruff check --fix` does the [*] ones):\n"
                    f"{proc.stdout}{proc.stderr}", pytrace=False)
