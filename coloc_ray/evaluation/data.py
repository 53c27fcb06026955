"""Read the offline benchmark files in ``/work/shared/data`` into plain records, and ``--limit`` them.

Every record gets an ``item_id`` (stable across runs, used in the per-item files) and, where the benchmark
has strata, the stratum field named in the registry (``subject``, ``domain``, ``type``, ``lang``).
Records keep their source layout; the task YAMLs' ``process_docs`` map them to lm-eval's standard fields.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections import defaultdict
from pathlib import Path

from coloc_ray.errors import UserError
from coloc_ray.io import shared_data_dir

MGSM_LANGS = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")


def data_file(*parts: str) -> Path:
    """A path under the shared data dir; UserError naming it if it is missing."""
    p = shared_data_dir().joinpath(*parts)
    if not p.exists():
        raise UserError(f"benchmark data file {p} is missing: restore it, or set $COLOC_DATA to the folder "
                        "that holds the offline data (see data/SOURCES.md)")
    return p


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _mmlu_rows(split: str, subject: str) -> list[dict]:
    path = data_file("mmlu", split, f"{subject}_{split}.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))  # csv keeps every cell a string (a choice "4" stays "4")
    return [{"item_id": f"{subject}/{i}", "subject": subject, "question": r["question"],
             "choices": [r[f"choice{k}"] for k in range(4)], "answer": int(r["answer"])}
            for i, r in enumerate(rows)]


def mmlu_subjects() -> list[str]:
    return sorted(p.name[: -len("_test.csv")] for p in data_file("mmlu", "test").glob("*_test.csv"))


def load_mmlu() -> tuple[list[dict], dict[str, list[dict]]]:
    """Test records of all 57 subjects, and the 5 dev (few-shot) records per subject."""
    subjects = mmlu_subjects()
    test = [r for s in subjects for r in _mmlu_rows("test", s)]
    return test, {s: _mmlu_rows("dev", s) for s in subjects}


def load_arc() -> tuple[list[dict], list[dict]]:
    """ARC-Challenge test records and the train records the 25 shots are drawn from."""
    def _hub(r: dict) -> dict:  # the allenai/ai2_arc layout the standard task's YAML reads
        ch = r["question"]["choices"]
        return {"item_id": r["id"], "question": r["question"]["stem"], "answerKey": r["answerKey"],
                "choices": {"text": [c["text"] for c in ch], "label": [c["label"] for c in ch]}}

    test = _jsonl(data_file("arc_challenge", "ARC-Challenge-Test.jsonl"))
    train = _jsonl(data_file("arc_challenge", "ARC-Challenge-Train.jsonl"))
    return [_hub(r) for r in test], [_hub(r) for r in train]


def load_gpqa() -> list[dict]:
    """GPQA main (448 questions), extracted from the authors' zip into the cache."""
    from coloc_ray.evaluation.gpqa import gpqa_csv

    with open(gpqa_csv("main"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    keep = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
    return [{"item_id": r["Record ID"], "domain": r["High-level domain"], **{k: r[k] for k in keep}}
            for r in rows]


def load_math() -> list[dict]:
    """MATH test (5,000), minus any problem that is one of the 4 few-shot examples (none is, in this copy)."""
    from coloc_ray.evaluation.tasks.utils import MATH_FEWSHOT

    shots = {s["problem"].strip() for s in MATH_FEWSHOT}
    rows = _jsonl(data_file("math", "test.jsonl"))
    out = []
    for r in rows:
        if r["problem"].strip() in shots:
            continue
        out.append({"item_id": f"math/{r['idx']}", "type": r["type"], "level": r["level"],
                    "problem": r["problem"], "solution": r["solution"]})
    return out


def load_mgsm() -> tuple[list[dict], dict[str, list[dict]]]:
    """MGSM test rows of the 11 languages, and the 8 exemplars per language (the few-shot source)."""
    test = []
    for lang in MGSM_LANGS:
        with open(data_file("mgsm", f"mgsm_{lang}.tsv"), encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.strip():
                    q, a = line.rstrip("\n").split("\t")
                    test.append({"item_id": f"{lang}/{i}", "lang": lang, "question": q,
                                 "answer": None, "answer_number": int(a.replace(",", ""))})
    ex = json.loads(data_file("mgsm", "exemplars.json").read_text(encoding="utf-8"))
    nums = ex["EXEMPLAR_NUMBER_ANSWERS"]
    shots = {lang: [{"item_id": f"{lang}/shot{k}", "lang": lang, "question": e["q"], "answer": e["a"],
                     "answer_number": int(nums[int(k) - 1])}
                    for k, e in sorted(ex["MGSM_EXEMPLARS"][lang].items(), key=lambda kv: int(kv[0]))]
             for lang in MGSM_LANGS}
    return test, shots


def load_humanevalplus() -> list[dict]:
    """The 164 HumanEval+ problems (EvalPlus format)."""
    rows = _jsonl(data_file("humanevalplus", "HumanEvalPlus.jsonl.gz"))
    for r in rows:
        r["item_id"] = r["task_id"]
    return rows


def stratified_limit(records: list[dict], n: int | None, key: str | None, seed: int) -> list[dict]:
    """About ``n`` records in total (per benchmark, not per stratum), spread evenly across strata.

    Strata are visited round-robin in a seeded order, each stratum's records in a seeded order, so
    ``n`` below the number of strata gives ``n`` different strata one item each, and an exhausted stratum
    leaves its share to the others. The result keeps the records' original order. ``n=None`` or
    ``n >= len(records)`` returns everything.
    """
    if n is None or n >= len(records):
        return list(records)
    if n <= 0:
        raise UserError(f"--limit {n}: give a positive number of items per benchmark")
    rng = random.Random(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[str(r[key]) if key else ""].append(i)
    order = sorted(groups)
    rng.shuffle(order)
    queues = []
    for g in order:
        idx = list(groups[g])
        rng.shuffle(idx)
        queues.append(idx)
    picked: list[int] = []
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop())
    return [records[i] for i in sorted(picked)]
