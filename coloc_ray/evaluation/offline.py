"""Render the offline lm-eval tasks: the chosen items as JSONL + the filled-in task YAMLs in one include dir.

The YAML templates in ``tasks/`` name no paths; here they get the run's own data files (already cut by
``--limit``), so lm-eval loads them with ``TaskManager(include_path=<dir>)`` and no network. Which loader and
which renderer a benchmark uses is part of its registry entry (``Benchmark.load`` / ``Benchmark.render``, in its
module under ``coloc_ray/evaluation/benchmarks/``); the renderers below are the shapes they share.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Callable

from coloc_ray.errors import UserError
from coloc_ray.evaluation import data

if TYPE_CHECKING:  # the registry imports the benchmark modules, which import this one
    from coloc_ray.evaluation.registry import Benchmark

TEMPLATES = Path(__file__).resolve().parent / "tasks"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    """Write ``rows`` to ``path``; return the path as a double-quoted YAML scalar (for a template field)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return json.dumps(str(path))


def render_template(template: str, out: Path, **fields) -> None:
    """Fill ``tasks/<template>`` with ``fields`` into ``out``; every ``${field}`` must be given."""
    text = Template((TEMPLATES / template).read_text(encoding="utf-8")).safe_substitute(**fields)
    if "${" in text:
        raise RuntimeError(f"task template {template}: unfilled field in {text[text.index('${'):][:40]!r}")
    out.write_text(text, encoding="utf-8")


def _missing(name: str, what: str, attr: str) -> UserError:
    from coloc_ray.evaluation.registry import BENCHMARKS

    have = [n for n, b in BENCHMARKS.items() if getattr(b, attr) is not None]
    return UserError(f"benchmark {name!r} is registered but has no offline {what} (Benchmark.{attr}, in its module "
                     f"under coloc_ray/evaluation/benchmarks/); add one there, or use a benchmark that has one: "
                     f"{', '.join(have)}")


def load_items(bench: Benchmark, limit: int | None, seed: int) -> tuple[list[dict], object]:
    """(the eval items after ``--limit``, the few-shot source) of one benchmark, from the offline files."""
    if bench.load is None:
        raise _missing(bench.name, "loader", "load")
    items, shots = bench.load()
    return data.stratified_limit(items, limit, bench.stratum, seed), shots


def render_tasks(bench: Benchmark, items: list[dict], shots, include_dir: Path, max_gen_toks: int) -> list[str]:
    """Write ``bench``'s data files and task YAMLs into ``include_dir``; return the lm-eval task names."""
    if bench.render is None:
        raise _missing(bench.name, "lm-eval task", "render")
    d = Path(include_dir)
    d.mkdir(parents=True, exist_ok=True)
    for py in sorted(TEMPLATES.glob("*.py")):  # utils.py (and any <bench>_utils.py) for `!function` fields
        if py.name != "__init__.py":
            shutil.copy(py, d / py.name)
    return bench.render(d, bench.name, items, shots, max_gen_toks)


def render_zero_shot(d: Path, name: str, items, shots, max_gen_toks: int) -> list[str]:
    """One task ``coloc_<name>`` from ``tasks/<name>.yaml`` (fields: task, test_file, max_gen_toks)."""
    task = f"coloc_{name}"
    render_template(f"{name}.yaml", d / f"{name}.yaml", task=task, max_gen_toks=str(max_gen_toks),
                    test_file=write_jsonl(d / f"{name}_test.jsonl", items))
    return [task]


def render_with_train(d: Path, name: str, items, shots, max_gen_toks: int) -> list[str]:
    """One task ``coloc_<name>`` whose few-shot examples come from ``shots`` (fields: task, test/train_file)."""
    fields = dict(task=f"coloc_{name}", test_file=write_jsonl(d / f"{name}_test.jsonl", items),
                  train_file=write_jsonl(d / f"{name}_train.jsonl", shots))
    render_template(f"{name}.yaml", d / f"{name}.yaml", **fields)
    return [fields["task"]]


def render_per_stratum(d: Path, name: str, items, shots, key: str, extra: Callable[[str], dict],
                       shot_key: str = "train_file") -> list[str]:
    """One task per subject / language present in ``items`` (the few-shot source ``shots[stratum]``, written
    to the template field ``shot_key``; ``extra(stratum)`` gives further fields)."""
    tasks = []
    for s in sorted({r[key] for r in items}):
        task = f"coloc_{name}_{s}"
        rows = [r for r in items if r[key] == s]
        render_template(f"{name}.yaml", d / f"{name}_{s}.yaml", task=task,
                        test_file=write_jsonl(d / f"{name}_{s}_test.jsonl", rows),
                        **{shot_key: write_jsonl(d / f"{name}_{s}_shots.jsonl", shots[s])}, **extra(s))
        tasks.append(task)
    return tasks
