"""Minimal pairs (METHOD 1): the 15 shipped pairs and a strict loader for users' JSONL files.

One JSON object a line: ``{"id": str, "domain": str, "correct": str, "incorrect": str}``. Every mistake
in a user file becomes a :class:`~coloc_ray.errors.UserError` naming the file and the line, before any model
is loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

from coloc_ray.errors import UserError

PAIR_FIELDS = ("id", "domain", "correct", "incorrect")


@dataclass(frozen=True)
class MinimalPair:
    """One correct / incorrect text pair of a domain (e.g. ``code``, ``knowledge``, ``math``)."""

    id: str
    domain: str
    correct: str
    incorrect: str

    def to_dict(self) -> dict:
        return asdict(self)


def default_pairs_path() -> Path:
    """The project's own 15 pairs (5 code, 5 knowledge, 5 math), shipped as package data."""
    return Path(str(resources.files("coloc_ray") / "data" / "minimal_pairs.jsonl"))


def iter_jsonl_objects(path: str | Path, what: str) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file.

    Args:
        path: the file.
        what: how the error messages name the file (e.g. ``--pairs``).

    Raises:
        UserError: missing/unreadable file, a line that is not a JSON object, or no records at all.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {str(p)!r}: no such file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {str(p)!r}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    found = 0
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines (e.g. a trailing newline) are not records
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{what} {str(p)!r} line {no}: not valid JSON ({e.msg}); "
                            "write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise UserError(f"{what} {str(p)!r} line {no}: expected a JSON object, got {type(obj).__name__}")
        found += 1
        yield no, obj
    if not found:
        raise UserError(f"{what} {str(p)!r}: the file is empty; it needs at least one JSON object per line")


def _check_pair(obj: dict, where: str) -> MinimalPair:
    for key in PAIR_FIELDS:
        if key not in obj:
            raise UserError(f"{where}: missing field {key!r} (each line needs {', '.join(PAIR_FIELDS)})")
        val = obj[key]
        if not isinstance(val, str):
            raise UserError(f"{where}: field {key!r} must be a string, got {type(val).__name__} {val!r}")
        if not val.strip():
            raise UserError(f"{where}: field {key!r} is empty")
    if obj["correct"] == obj["incorrect"]:
        raise UserError(f"{where}: 'correct' and 'incorrect' are the same text; a minimal pair must differ")
    return MinimalPair(*(obj[k] for k in PAIR_FIELDS))


def load_pairs(path: str | Path | None = None, what: str = "--pairs") -> list[MinimalPair]:
    """Load minimal pairs from ``path`` (default: the shipped 15), validating every line.

    Raises:
        UserError: naming the file and line for a missing field, a non-string or empty field,
            identical correct/incorrect texts, a duplicate id, a non-JSON line or an empty file.
    """
    src = Path(path) if path is not None else default_pairs_path()
    pairs: list[MinimalPair] = []
    first_seen: dict[str, int] = {}
    for no, obj in iter_jsonl_objects(src, what):
        pair = _check_pair(obj, f"{what} {str(src)!r} line {no}")
        if pair.id in first_seen:
            raise UserError(f"{what} {str(src)!r} line {no}: duplicate id {pair.id!r} "
                            f"(first on line {first_seen[pair.id]}); ids must be unique")
        first_seen[pair.id] = no
        pairs.append(pair)
    return pairs


def domains_of(pairs: list[MinimalPair]) -> list[str]:
    """The domains in first-seen order (the order of ``per_domain`` in the output)."""
    return list(dict.fromkeys(p.domain for p in pairs))
