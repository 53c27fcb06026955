"""Eval texts for the RoPE probe (METHOD 2): a fixed held-out set outside every training split, or a user file.

Default: the GSM8K *test* split from ``shared_data_dir()``, rendered as plain text and shuffled with a fixed
seed. Why not a slice of the training mix: the fine-tune draws its training records from all of CodeAlpaca 2k
and GSM8K train, so a slice of those (the old default) was 170-190 of 190 records inside some training split.
GSM8K test is in no training mix and is not one of the evaluated benchmarks; it is math word problems only,
which the report states (pass ``--eval-data`` for another domain). Consecutive records are joined until a text
has ``min_chars`` characters, because on a short text a change of RoPE base barely moves the loss (the
positions are all small).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from coloc_ray.errors import UserError
from coloc_ray.io import shared_data_dir
from coloc_ray.probes.pairs import iter_jsonl_objects

HELDOUT_FILE = "gsm8k/test.jsonl"
HELDOUT_SEED = 0
DEFAULT_NUM_TEXTS = 16
DEFAULT_MIN_CHARS = 2400  # ~600 SmolLM2 tokens: past the default max_len of 512


def _render_codealpaca(rec: dict) -> str:
    parts = [rec.get("instruction", ""), rec.get("input", ""), rec.get("output", "")]
    return "\n".join(p.strip() for p in parts if p and p.strip())


def _render_gsm8k(rec: dict) -> str:
    return f"Question: {rec['question'].strip()}\nAnswer: {rec['answer'].strip()}"


def training_mix_records(data_dir: Path | None = None) -> list[str]:
    """All records of the offline training mix (CodeAlpaca 2k, then GSM8K train) as plain texts: what the
    default eval texts must never contain (checked in tests/probes/test_evaltexts_heldout.py)."""
    d = Path(data_dir) if data_dir else shared_data_dir()
    ca, gsm = d / "codealpaca" / "code_alpaca_2k.json", d / "gsm8k" / "train.jsonl"
    for p in (ca, gsm):
        if not p.is_file():
            raise UserError(f"the training mix needs {p} (set COLOC_DATA to the offline data folder)")
    texts = [_render_codealpaca(r) for r in json.loads(ca.read_text())]
    with gsm.open() as f:
        texts += [_render_gsm8k(json.loads(line)) for line in f if line.strip()]
    return [t for t in texts if t]


def heldout_records(data_dir: Path | None = None) -> list[str]:
    """The default held-out records (GSM8K test) as plain texts, in file order."""
    path = (Path(data_dir) if data_dir else shared_data_dir()) / HELDOUT_FILE
    if not path.is_file():
        raise UserError(f"default eval texts need {path} (set COLOC_DATA to the offline data folder) "
                        "or pass --eval-data FILE.jsonl with a 'text' field per line")
    with path.open() as f:
        return [_render_gsm8k(json.loads(line)) for line in f if line.strip()]


def default_eval_texts(num_texts: int = DEFAULT_NUM_TEXTS, min_chars: int = DEFAULT_MIN_CHARS,
                       data_dir: Path | None = None) -> list[str]:
    """``num_texts`` texts of >= ``min_chars`` characters from the seeded shuffle of the held-out records."""
    records = heldout_records(data_dir)
    random.Random(HELDOUT_SEED).shuffle(records)
    texts, cur = [], ""
    for rec in records:
        cur = f"{cur}\n\n{rec}" if cur else rec
        if len(cur) >= min_chars:
            texts.append(cur)
            cur = ""
            if len(texts) == num_texts:
                return texts
    raise UserError(f"--num-texts {num_texts}: the held-out records give only {len(texts)} texts of "
                    f"{min_chars} characters; use --num-texts <= {len(texts)} or --eval-data FILE")


def load_eval_texts(path: str | Path, num_texts: int | None = None) -> list[str]:
    """Texts from a JSONL file with a non-empty string ``text`` per line (the first ``num_texts`` if given)."""
    texts = []
    for no, obj in iter_jsonl_objects(path, "--eval-data"):
        where = f"--eval-data {str(path)!r} line {no}"
        if "text" not in obj:
            raise UserError(f"{where}: missing field 'text'")
        if not isinstance(obj["text"], str):
            raise UserError(f"{where}: field 'text' must be a string, got {type(obj['text']).__name__}")
        if not obj["text"].strip():
            raise UserError(f"{where}: field 'text' is empty")
        texts.append(obj["text"])
    return texts[:num_texts] if num_texts else texts


def resolve_eval_texts(eval_data=None, num_texts: int | None = None) -> list[str]:
    """``eval_data``: None (default held-out slice), a JSONL path, or a list of strings."""
    if num_texts is not None and num_texts < 1:
        raise UserError(f"--num-texts {num_texts}: must be >= 1")
    if eval_data is None:
        return default_eval_texts(num_texts or DEFAULT_NUM_TEXTS)
    if isinstance(eval_data, (list, tuple)):
        if not eval_data or not all(isinstance(t, str) and t.strip() for t in eval_data):
            raise UserError("eval_data: a list of eval texts must hold non-empty strings")
        return list(eval_data)[:num_texts] if num_texts else list(eval_data)
    return load_eval_texts(eval_data, num_texts)
