"""GARFA-aware vLLM models, registered through vLLM's general-plugin entry point (METHOD 5, 8).

vLLM runs ``register()`` in every process it starts (the front end, the engine core, each worker) because
``pyproject.toml`` declares it under ``[project.entry-points."vllm.general_plugins"]``. It registers, for each
supported family (Llama, Qwen2, Mistral, Qwen3, Qwen3-MoE, Gemma 2, Gemma 3 text, Phi-3), an out-of-tree
architecture ``Garfa<Arch>`` (e.g. ``GarfaLlamaForCausalLM``) that is vLLM's
own model class plus GARFA key rotation in the layers of the adapter's ``garfa.json``.

How the engine learns where the GARFA files are: ``hf_overrides`` (see :func:`garfa_hf_overrides`) sets
``architectures`` to the GARFA class and adds ``garfa_path`` to the HF config. The overrides are part of
vLLM's ``ModelConfig``, which is shipped to the engine-core and worker processes, so no environment variable
has to survive the process hops. From the command line the same works with
``vllm serve <model> --hf-overrides '{"architectures": ["GarfaLlamaForCausalLM"], "garfa_path": "<dir>"}'``.

This module imports no vLLM at import time (the main venv has none); the classes live in ``models.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from coloc_ray.errors import UserError

# HF architecture -> (the GARFA architecture name, "module:class" of its implementation).
GARFA_ARCHS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("GarfaLlamaForCausalLM", "coloc_ray.evaluation.vllm_plugin.models:GarfaLlamaForCausalLM"),
    "Qwen2ForCausalLM": ("GarfaQwen2ForCausalLM", "coloc_ray.evaluation.vllm_plugin.models:GarfaQwen2ForCausalLM"),
    "MistralForCausalLM": ("GarfaMistralForCausalLM",
                           "coloc_ray.evaluation.vllm_plugin.models:GarfaMistralForCausalLM"),
    **{arch: (f"Garfa{arch}", f"coloc_ray.evaluation.vllm_plugin.models:Garfa{arch}") for arch in (
        "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM")},
}
CONFIG_KEY = "garfa_path"  # the HF-config field (set through hf_overrides) that names the GARFA directory


def register() -> None:
    """vLLM general-plugin hook: register the GARFA architectures (idempotent, lazy class import)."""
    from vllm import ModelRegistry

    for name, target in GARFA_ARCHS.values():
        if name not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(name, target)


def has_garfa(adapter_dir: str | os.PathLike | None) -> bool:
    """True when ``adapter_dir`` holds GARFA scalers (``garfa.json``)."""
    return adapter_dir is not None and (Path(adapter_dir) / "garfa.json").is_file()


def garfa_hf_overrides(model_dir: str | os.PathLike, garfa_dir: str | os.PathLike) -> dict:
    """The ``hf_overrides`` that make vLLM load ``model_dir`` as its GARFA twin reading ``garfa_dir``.

    Args:
        model_dir: the base model's HF directory (its ``config.json`` names the architecture).
        garfa_dir: the directory with ``garfa.json`` + ``garfa.safetensors`` (usually the adapter dir).

    Raises:
        UserError: no GARFA files there, or a model architecture with no GARFA twin.
    """
    if not has_garfa(garfa_dir):
        raise UserError(f"--adapter {garfa_dir}: no garfa.json there; point at a directory saved by save_garfa")
    cfg_path = Path(model_dir) / "config.json"
    try:
        archs = json.loads(cfg_path.read_text()).get("architectures") or []
    except (OSError, ValueError) as e:
        raise UserError(f"--model {model_dir}: cannot read {cfg_path} ({e}); give a local HF model directory") from None
    for arch in archs:
        if arch in GARFA_ARCHS:
            return {"architectures": [GARFA_ARCHS[arch][0]], CONFIG_KEY: str(Path(garfa_dir).resolve())}
    raise UserError(f"--model {model_dir}: architecture {archs} has no GARFA vLLM model; supported: "
                    f"{', '.join(sorted(GARFA_ARCHS))} (use --backend hf)")
