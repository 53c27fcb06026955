"""bench/gpu_suite.sh in its CPU dry mode: the GPU suite runs end to end at tiny shapes, so it cannot rot.

Numbers checked against references that do not come from the suite: GARFA at rho = 0 equals the unpatched
model (METHOD 5), LoRA's B = 0 initialisation makes every configuration's first loss the base model's loss on
that batch (computed here directly), and the trainable-parameter counts follow r * (d_in + d_out) per projection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
# Tiny shapes, but two interpreter starts with torch + transformers + PEFT: ~20 s idle, minutes on a loaded box.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite") / "suite.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run([str(REPO / "bench" / "gpu_suite.sh"), "--dry", "--out", str(out)], capture_output=True,
                          text=True, env=env, timeout=600, cwd=tmp_path_factory.getbasetemp())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_dry_run_writes_every_section(suite):
    assert suite["mode"] == "dry" and suite["versions"]["torch"] == torch.__version__
    tr = suite["training"]
    for name in ("lora_late", "lora_early", "lora_late+garfa_early", "lora_late+garfa_late"):
        assert tr[name]["tokens_per_s"] > 0 and tr[name]["step_s"] > 0
    assert set(tr["garfa_overhead"]) == {"lora_early", "lora_late+garfa_early", "lora_late+garfa_late"}
    assert suite["rope_probe"]["cached_s"] > 0 and suite["rope_probe"]["tokens"] > 0
    for part in ("qlora_4bit", "vllm_generation"):  # nothing silently missing: a reason for each skip
        assert suite[part]["skipped"]


def test_dry_run_numbers_match_references(suite):
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_suite

    assert suite["rho0_check"]["abs_diff"] < 1e-6
    model = gpu_suite.build(gpu_suite.TINY, "cpu", torch.float32)  # the suite's own seed: the same weights
    b, s, v = suite["args"]["batch"], suite["args"]["seq"], gpu_suite.TINY["vocab_size"]
    batch = torch.randint(0, v, (b, s), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_loss = float(model(input_ids=batch, labels=batch).loss)
    tr = suite["training"]
    t = gpu_suite.TINY
    h, q, kv = t["hidden_size"], t["num_attention_heads"] * t["head_dim"], t["num_key_value_heads"] * t["head_dim"]
    per_layer = 16 * (2 * (h + q) + 2 * (h + kv) + 3 * (h + t["intermediate_size"]))  # r (in + out): q,o k,v mlp
    k = suite["args"]["num_lora_layers"]
    for name in ("lora_late", "lora_early", "lora_late+garfa_early", "lora_late+garfa_late"):
        assert tr[name]["first_loss"] == pytest.approx(base_loss, abs=1e-5), name
    assert tr["lora_late"]["trainable_params"] == tr["lora_early"]["trainable_params"] == k * per_layer
    assert tr["lora_late+garfa_early"]["trainable_params"] == k * per_layer + k * t["num_key_value_heads"]
    probe = suite["rope_probe"]
    for f, by_layer in probe["naive_losses"].items():  # the two probe modes agree
        assert probe["cached_losses"][f] == pytest.approx(by_layer, rel=1e-5)
