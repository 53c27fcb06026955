"""SmolLM2-135M on 2 Ray Train workers: held-out loss falls, the adapter reloads and generates (slow)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_smollm2_two_workers_trains_and_adapter_generates(ray_local, tmp_path):
    from coloc_ray.finetune.adapter import load_adapted
    from coloc_ray.finetune.api import run_finetune
    from coloc_ray.finetune.config import FinetuneConfig
    from coloc_ray.models import load_model

    cfg = FinetuneConfig(
        model="smollm2-135m", lora_layers=[20, 21, 29], garfa_layers=[0, 1, 2], max_steps=24, batch_size=2,
        grad_accum=2, max_len=256, lr=1e-3, quant="none", num_workers=2, cpus_per_worker=1, eval_every=12,
        eval_max_records=16, checkpoint_every=12, tracking=False, data={"max_records": 400})
    m = run_finetune(cfg, tmp_path / "out")
    print({k: v for k, v in m.items() if k != "train_losses"})
    assert m["num_workers"] == 2 and m["steps"] == 24
    assert m["lora_params"] == 488_448  # 7 projections on 3 SmolLM2 layers (ENVIRONMENT.md, counted by PEFT)
    assert m["garfa_params"] == 3 * 3
    evals = [e["loss"] for e in m["eval_losses"]]
    assert evals[-1] < evals[0], evals
    lm = load_model("smollm2-135m")
    model = load_adapted(lm.model, tmp_path / "out")
    msgs = [{"role": "user", "content": "Write a Python function that returns the square of x."}]
    prompt = lm.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = lm.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=32, do_sample=False)
    text = lm.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    print("generated:", repr(text))
    assert len(text.strip()) > 0
