"""Training data: chat rendering, assistant-only labels, seeded split and sharded order, bad records."""

from __future__ import annotations

import json

import pytest

from coloc_ray.errors import UserError
from coloc_ray.finetune import data as D
from coloc_ray.finetune.config import DataConfig

MSGS = [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "2 + 3 = 5"}]


def _tokenizer(name):
    from transformers import AutoTokenizer

    from coloc_ray.models import resolve_model_dir

    return AutoTokenizer.from_pretrained(resolve_model_dir(name)[0])


@pytest.mark.parametrize("name", ["tiny-gqa", "smollm2-135m"])
def test_labels_cover_exactly_the_assistant_turn(name):
    tok = _tokenizer(name)
    ex = D.encode(tok, MSGS, max_len=512)
    # Independent reference: the rendered text splits into prompt + assistant text + the template's end.
    full = tok.apply_chat_template(MSGS, tokenize=False)
    prompt = tok.apply_chat_template(MSGS[:1], tokenize=False, add_generation_prompt=True)
    assert full.startswith(prompt)
    learned = tok.decode([t for t, l in zip(ex["input_ids"], ex["labels"]) if l != D.IGNORE])
    assert learned == full[len(prompt):]
    assert learned.startswith("2 + 3 = 5")
    masked = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l == D.IGNORE]
    assert tok.decode(masked) == prompt
    # Labels equal inputs wherever they are not masked (the model shifts them itself).
    assert all(l in (D.IGNORE, t) for t, l in zip(ex["input_ids"], ex["labels"]))


def test_truncation_keeps_max_len_and_drops_prompt_only_examples():
    tok = _tokenizer("tiny-gqa")
    ex = D.encode(tok, MSGS, max_len=40)
    assert ex is not None and len(ex["input_ids"]) == 40
    assert D.encode(tok, MSGS, max_len=10) is None  # prompt alone is longer than 10 byte tokens


def test_offline_mix_loads_and_bad_record_names_file_and_index(tmp_path, monkeypatch):
    msgs = D.load_messages(DataConfig(max_records=5))
    assert len(msgs) == 10 and all(m[-1]["role"] == "assistant" for m in msgs)
    (tmp_path / "gsm8k").mkdir()
    rows = [{"question": "q", "answer": "a"}, {"question": "q2"}]
    (tmp_path / "gsm8k" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    monkeypatch.setenv("COLOC_DATA", str(tmp_path))
    with pytest.raises(UserError, match=r"train\.jsonl' record 1: .*answer"):
        D.load_messages(DataConfig(datasets=["gsm8k"]))
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        D.load_messages(DataConfig(datasets=["nope"]))


def test_heldout_split_is_seeded_disjoint_and_two_percent():
    items = list(range(1000))
    tr, he = D.split_heldout(items, 0.02, seed=3)
    assert len(he) == 20 and not set(tr) & set(he) and len(tr) + len(he) == 1000
    assert D.split_heldout(items, 0.02, seed=3) == (tr, he)
    assert D.split_heldout(items, 0.02, seed=4)[1] != he


def test_sharded_order_partitions_each_epoch_and_is_a_function_of_position():
    a = D.ShardedOrder(50, batch_size=4, seed=1, rank=0, world=2)
    b = D.ShardedOrder(50, batch_size=4, seed=1, rank=1, world=2)
    assert a.batches_per_epoch == 6
    epoch0 = [i for m in range(6) for i in a.batch(m)] + [i for m in range(6) for i in b.batch(m)]
    assert len(epoch0) == len(set(epoch0)) == 48
    fresh = D.ShardedOrder(50, batch_size=4, seed=1, rank=0, world=2)
    assert fresh.batch(7) == a.batch(7) and a.batch(6) != a.batch(0)  # a new epoch reshuffles
    with pytest.raises(UserError, match="batch"):
        D.ShardedOrder(3, batch_size=4, seed=0)


def test_hub_source_offline_is_a_user_error(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="data.source=hub: cannot load 'sahil2801/CodeAlpaca-20k'"):
        D.load_messages(DataConfig(source="hub", datasets=["codealpaca-20k"]))
