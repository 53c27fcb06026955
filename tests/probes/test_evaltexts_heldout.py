"""The RoPE probe's default eval texts are held out: no record of any training split is in them (METHOD 2)."""

from __future__ import annotations

from coloc_ray.probes.evaltexts import default_eval_texts, heldout_records, training_mix_records


def test_default_texts_share_no_record_with_the_training_mix():
    train = set(training_mix_records())
    held = heldout_records()
    assert not train & set(held)
    # and no training record's question appears inside a default text (a stricter, substring check)
    questions = {t.split("\nAnswer:", 1)[0] for t in train if t.startswith("Question: ")}
    texts = default_eval_texts()
    assert len(texts) == 16 and all(len(t) >= 2400 for t in texts)
    for text in texts:
        parts = text.split("\n\nQuestion: ")
        recs = [parts[0]] + ["Question: " + p for p in parts[1:]]
        assert all(r in set(held) for r in recs)
        assert not any(r.split("\nAnswer:", 1)[0] in questions for r in recs)
