"""Training data (METHOD 6): records -> chat messages -> token ids with assistant-only labels.

One loader for every source. Offline: the CodeAlpaca 2k and GSM8K train files in the shared data dir.
Online: the METHOD 6 hub datasets through ``datasets``. Each record becomes chat messages rendered with the
model's own chat template; the loss sees only assistant tokens.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from coloc_ray.errors import UserError

log = logging.getLogger(__name__)

IGNORE = -100  # label value the cross-entropy skips
# Seed of the record subsample and the held-out split when the data config names none: the data is a
# function of the data config alone, never of the training seed or the arm, so every arm and every
# training seed is scored on the same held-out records (paired per-record comparisons need that).
DATA_SEED = 0


def data_seed(data_cfg) -> int:
    """The seed of the subsample and held-out split: ``data_cfg.seed`` if the config has one, else DATA_SEED."""
    seed = getattr(data_cfg, "seed", None)
    return DATA_SEED if seed is None else int(seed)


@dataclass(frozen=True)
class DatasetSpec:
    """A named training set: where it comes from and how one record becomes (user, assistant) messages."""

    name: str
    source: str                  # "offline" | "hub"
    location: str                # file under the shared data dir, or a hub id
    to_messages: Callable[[dict], Optional[list[dict]]]  # None: skip the record (empty answer)
    hub_records: Optional[int] = None  # METHOD 6 subsample size for hub sets


def _field(rec: dict, key: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str):
        raise KeyError(f"field {key!r} missing or not a string")
    return v


def _pair(user: str, assistant: str) -> Optional[list[dict]]:
    if not assistant.strip():
        return None  # real sets hold a few empty answers (CodeAlpaca 2k: 2): nothing to learn, skip them
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _alpaca(rec: dict) -> Optional[list[dict]]:
    inp = rec.get("input") or ""
    user = _field(rec, "instruction") + (f"\n\n{inp}" if inp.strip() else "")
    return _pair(user, _field(rec, "output"))


def _hermes(rec: dict) -> Optional[list[dict]]:
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    msgs = [{"role": roles[t["from"]], "content": t["value"]} for t in rec["conversations"]]
    if not msgs or msgs[-1]["role"] != "assistant":
        raise KeyError("conversation does not end with an assistant turn")
    return msgs


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> None:
    """Add a training set to the registry (names are what ``data.datasets`` accepts)."""
    DATASETS[spec.name] = spec


for _spec in (
    DatasetSpec("codealpaca-2k", "offline", "codealpaca/code_alpaca_2k.json", _alpaca),
    DatasetSpec("gsm8k", "offline", "gsm8k/train.jsonl",
                lambda r: _pair(_field(r, "question"), _field(r, "answer"))),
    DatasetSpec("magicoder-oss-75k", "hub", "ise-uiuc/Magicoder-OSS-Instruct-75K",
                lambda r: _pair(_field(r, "problem"), _field(r, "solution")), 75_000),
    DatasetSpec("codealpaca-20k", "hub", "sahil2801/CodeAlpaca-20k", _alpaca, 20_000),
    DatasetSpec("metamathqa-30k", "hub", "meta-math/MetaMathQA",
                lambda r: _pair(_field(r, "query"), _field(r, "response")), 30_000),
    DatasetSpec("openhermes-2.5-20k", "hub", "teknium/OpenHermes-2.5", _hermes, 20_000),
):
    register_dataset(_spec)


def _read_offline(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"training data {str(path)!r} not found; set $COLOC_DATA to the shared data dir")
    text = path.read_text()
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"training data {str(path)!r}: not valid JSON ({e}); fix or replace the file") from None


def _read_hub(spec: DatasetSpec, seed: int) -> tuple[str, list[dict]]:
    import datasets  # lazy: only the online path needs it

    try:
        ds = datasets.load_dataset(spec.location, split="train").shuffle(seed=seed)
    except Exception as e:  # offline, gated, renamed: the user's fix is the same
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"data.source=hub: cannot load {spec.location!r} ({first}); go online or use "
                        "data.source offline") from None
    n = min(spec.hub_records or len(ds), len(ds))
    return spec.location, [ds[i] for i in range(n)]


def load_messages(data_cfg, seed: int = 0) -> list[list[dict]]:
    """All records of the configured datasets as chat message lists (UserError names file and record index)."""
    return [msgs for _, msgs in load_records(data_cfg, seed)]


def load_records(data_cfg, seed: int = 0) -> list[tuple[str, list[dict]]]:
    """Like :func:`load_messages`, each with its record id ``<dataset>:<index in the source>``."""
    names = data_cfg.datasets or [n for n, s in DATASETS.items() if s.source == data_cfg.source]
    out: list[tuple[str, list[dict]]] = []
    skipped = 0
    for name in names:
        if name not in DATASETS:
            raise UserError(f"data.datasets: unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
        spec = DATASETS[name]
        if spec.source == "offline":
            from coloc_ray.io import shared_data_dir

            where = str(shared_data_dir() / spec.location)
            records = _read_offline(Path(where))
        else:
            where, records = _read_hub(spec, seed)
        if data_cfg.max_records and len(records) > data_cfg.max_records:
            keep = sorted(random.Random(seed).sample(range(len(records)), data_cfg.max_records))
            records = [(i, records[i]) for i in keep]
        else:
            records = list(enumerate(records))
        for i, rec in records:
            try:
                msgs = spec.to_messages(rec)
            except (KeyError, TypeError, AttributeError) as e:
                raise UserError(f"training data {where!r} record {i}: {e}; fix or drop that record") from None
            if msgs is None:
                skipped += 1
            else:
                out.append((f"{name}:{i}", msgs))
    if skipped:
        log.info("skipped %d records with an empty answer", skipped)
    return out


def encode(tokenizer, messages: list[dict], max_len: int) -> Optional[dict]:
    """Render ``messages`` with the model's chat template; labels are IGNORE except the last assistant turn.

    The prompt part is the conversation up to the last assistant turn rendered with
    ``add_generation_prompt=True``; its token length is what gets masked. Returns None when truncation to
    ``max_len`` leaves no assistant token.
    """
    full = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    pids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    n = 0  # BPE could merge across the boundary; mask the common prefix only
    while n < min(len(ids), len(pids)) and ids[n] == pids[n]:
        n += 1
    ids = ids[:max_len]
    labels = [IGNORE] * min(n, len(ids)) + ids[n:]
    if all(x == IGNORE for x in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def encode_all(tokenizer, conversations: Iterable[list[dict]], max_len: int,
               ids: Optional[list[str]] = None) -> list[dict]:
    """Encode every conversation, dropping (and counting) those truncated to no assistant token.

    ``ids``: one record id per conversation, kept as each example's ``"id"`` (per-record held-out losses).
    """
    conversations = list(conversations)
    ids = ids if ids is not None else [None] * len(conversations)
    out, dropped = [], 0
    for rid, msgs in zip(ids, conversations, strict=True):
        ex = encode(tokenizer, msgs, max_len)
        if ex is None:
            dropped += 1
        else:
            out.append(ex if rid is None else {**ex, "id": rid})
    if dropped:
        log.info("dropped %d records whose prompt alone fills max_len=%d", dropped, max_len)
    if not out:
        raise UserError(f"no training record fits max_len={max_len}; raise --max-len")
    return out


def split_heldout(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded (train, heldout) split; at least one held-out item."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    k = max(1, round(len(items) * fraction))
    if k >= len(items):
        raise UserError(f"heldout_fraction={fraction} leaves no training data from {len(items)} records")
    held = sorted(order[:k])
    train = sorted(order[k:])
    return [items[i] for i in train], [items[i] for i in held]


def collate(examples: list[dict], pad_id: int):
    """Right-pad a list of encoded examples into (input_ids, attention_mask, labels) tensors."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class ShardedOrder:
    """Seeded, stateless data order: micro-batch ``m`` of rank ``rank`` is a pure function of (seed, m).

    Each epoch is a fresh seeded permutation; rank r takes every world-th index (DistributedSampler-like,
    tail dropped so ranks stay in step). Because the position is just the micro-batch counter, a
    checkpoint that stores the counter resumes the exact data order.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.bs, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_rank = n // world
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise UserError(f"{n} training records cannot fill one batch of {batch_size} on each of {world} "
                            "workers; lower --batch-size or --num-workers or add data")
        self._epoch, self._shard = -1, []

    def batch(self, m: int) -> list[int]:
        """Indices of micro-batch ``m`` (0-based, counted over the whole run) for this rank."""
        epoch, pos = divmod(m, self.batches_per_epoch)
        if epoch != self._epoch:
            perm = list(range(self.n))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(perm)
            self._epoch, self._shard = epoch, perm[self.rank::self.world][:self.per_rank]
        return self._shard[pos * self.bs:(pos + 1) * self.bs]
