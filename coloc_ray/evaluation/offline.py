"""Render the offline lm-eval tasks: the chosen items as JSONL + the filled-in task YAMLs in one include dir.

The YAML templates in ``tasks/`` name no paths; here they get the run's own data files (already cut by
``--limit``), so lm-eval loads them with ``TaskManager(include_path=<dir>)`` and no network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from string import Template
from typing import Callable

from coloc_ray.errors import UserError
from coloc_ray.evaluation import data
from coloc_ray.evaluation.registry import Benchmark

TEMPLATES = Path(__file__).resolve().parent / "tasks"


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return json.dumps(str(path))  # a double-quoted YAML scalar


def _render(template: str, out: Path, **fields) -> None:
    text = Template((TEMPLATES / template).read_text(encoding="utf-8")).safe_substitute(**fields)
    if "${" in text:
        raise RuntimeError(f"task template {template}: unfilled field in {text[text.index('${'):][:40]!r}")
    out.write_text(text, encoding="utf-8")


# The offline data of each benchmark: name -> () -> (items, few-shot source). A benchmark registered in
# registry.py needs an entry here (and, for an lm-eval one, in RENDERERS below) to run offline.
LOADERS: dict[str, Callable[[], tuple[list[dict], object]]] = {
    "arc_challenge": data.load_arc, "mmlu": data.load_mmlu, "mgsm": data.load_mgsm,
    "gpqa": lambda: (data.load_gpqa(), None), "math": lambda: (data.load_math(), None),
    "humanevalplus": lambda: (data.load_humanevalplus(), None),
}


def _missing(name: str, what: str, table: dict) -> UserError:
    return UserError(f"benchmark {name!r} is registered but has no offline {what} (coloc_ray/evaluation/"
                     f"offline.py); add one there, or use a benchmark that has one: {', '.join(table)}")


def load_items(bench: Benchmark, limit: int | None, seed: int) -> tuple[list[dict], object]:
    """(the eval items after ``--limit``, the few-shot source) of one benchmark, from the offline files."""
    if bench.name not in LOADERS:
        raise _missing(bench.name, "loader (LOADERS)", LOADERS)
    items, shots = LOADERS[bench.name]()
    return data.stratified_limit(items, limit, bench.stratum, seed), shots


def render_tasks(bench: Benchmark, items: list[dict], shots, include_dir: Path, max_gen_toks: int) -> list[str]:
    """Write ``bench``'s data files and task YAMLs into ``include_dir``; return the lm-eval task names."""
    if bench.name not in RENDERERS:
        raise _missing(bench.name, "lm-eval task (RENDERERS)", RENDERERS)
    d = Path(include_dir)
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(TEMPLATES / "utils.py", d / "utils.py")
    return RENDERERS[bench.name](d, bench.name, items, shots, max_gen_toks)


def _render_arc(d: Path, name: str, items, shots, max_gen_toks: int) -> list[str]:
    fields = dict(task=f"coloc_{name}", test_file=_write_jsonl(d / f"{name}_test.jsonl", items),
                  train_file=_write_jsonl(d / f"{name}_train.jsonl", shots))
    _render("arc_challenge.yaml", d / f"{name}.yaml", **fields)
    return [fields["task"]]


def _render_zero_shot(d: Path, name: str, items, shots, max_gen_toks: int) -> list[str]:
    task = f"coloc_{name}"
    _render(f"{name}.yaml", d / f"{name}.yaml", task=task, max_gen_toks=str(max_gen_toks),
            test_file=_write_jsonl(d / f"{name}_test.jsonl", items))
    return [task]


def _render_per_stratum(d: Path, name: str, items, shots, key: str, extra) -> list[str]:
    """One task per subject / language present in ``items`` (the few-shot source is per stratum)."""
    tasks = []
    for s in sorted({r[key] for r in items}):
        task = f"coloc_{name}_{s}"
        rows = [r for r in items if r[key] == s]
        shot_key = "dev_file" if name == "mmlu" else "train_file"
        _render(f"{name}.yaml", d / f"{name}_{s}.yaml", task=task,
                test_file=_write_jsonl(d / f"{name}_{s}_test.jsonl", rows),
                **{shot_key: _write_jsonl(d / f"{name}_{s}_shots.jsonl", shots[s])}, **extra(s))
        tasks.append(task)
    return tasks


def _mmlu_fields(subject: str) -> dict:
    text = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return {"description": json.dumps(text)}


def _mgsm_fields(lang: str, max_gen_toks: int) -> dict:
    # lm-eval's own table of localized prompt words, so the prompt is the standard task's to the character.
    from lm_eval.tasks.mgsm.utils import LANGUAGES

    q, a = LANGUAGES[lang]["QUESTION"], LANGUAGES[lang]["DIRECT"]
    text = (f'{{% if answer is not none %}}{{{{question+"\\n{a}"}}}}'
            f'{{% else %}}{{{{"{q} "+question+"\\n{a}"}}}}{{% endif %}}')
    return {"doc_to_text": json.dumps(text, ensure_ascii=False), "max_gen_toks": str(max_gen_toks),
            "until": json.dumps([q, "</s>", "<|im_end|>"], ensure_ascii=False)}


# name -> writes that benchmark's task YAMLs + data files, returns its lm-eval task names.
RENDERERS: dict[str, Callable[..., list[str]]] = {
    "arc_challenge": _render_arc, "gpqa": _render_zero_shot, "math": _render_zero_shot,
    "mmlu": lambda d, name, items, shots, n: _render_per_stratum(d, name, items, shots, "subject", _mmlu_fields),
    "mgsm": lambda d, name, items, shots, n: _render_per_stratum(d, name, items, shots, "lang",
                                                                lambda s: _mgsm_fields(s, n)),
}
