"""A model's shape (L, H, G, d, RoPE base) from its config alone: the one reader every stage uses before a load.

``model_shape(spec)`` takes what ``--model`` takes (alias, HF directory, hub id, ``.gguf`` file) and reads no
weights: an HF config through ``AutoConfig``, a GGUF file through its own metadata (``<arch>.block_count`` ...).
``shape_from_config`` is the same reading of an HF config object, shared with ``model_info`` on a loaded model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coloc_ray.errors import UserError


@dataclass(frozen=True)
class ModelShape:
    """The shape facts a study needs before any weights are loaded."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float


class ConfigNotCached(UserError):
    """A hub id whose config is not in the local HF cache (asked for offline)."""


def rope_params(cfg) -> dict:
    """The (global) RoPE parameters of an HF config: ``rope_parameters``, or its full-attention entry when the
    config keeps one dict per layer type (Gemma 3)."""
    rope = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(rope, dict) and "rope_theta" not in rope and rope:
        rope = rope.get("full_attention") or next(iter(rope.values()))
        rope = rope if isinstance(rope, dict) else {}
    return rope


def shape_from_config(cfg) -> ModelShape:
    """:class:`ModelShape` of an HF config (a multimodal wrapper's decoder config is used)."""
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = int(cfg.num_attention_heads)
    return ModelShape(
        num_layers=int(cfg.num_hidden_layers), num_heads=heads,
        num_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads),
        rope_theta=float(rope_params(cfg).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))


def gguf_shape(path: Path) -> ModelShape:
    """:class:`ModelShape` from a GGUF file's own metadata, without loading its weights."""
    import gguf

    try:
        fields = gguf.GGUFReader(str(path)).fields

        def get(key: str, default=None):
            f = fields.get(key)
            if f is None:
                if default is None:
                    raise KeyError(key)
                return default
            return f.parts[f.data[0]]

        arch = bytes(get("general.architecture")).decode()
        heads = int(get(f"{arch}.attention.head_count")[0])
        kv = int(get(f"{arch}.attention.head_count_kv", [heads])[0])
        head_dim = get(f"{arch}.attention.key_length", [0])[0] or int(get(f"{arch}.embedding_length")[0]) // heads
        return ModelShape(num_layers=int(get(f"{arch}.block_count")[0]), num_heads=heads, num_kv_heads=kv,
                          head_dim=int(head_dim), rope_theta=float(get(f"{arch}.rope.freq_base", [10000.0])[0]))
    except (KeyError, ValueError, IndexError, OSError) as e:
        raise UserError(f"{path}: cannot read its shape from the GGUF metadata ({type(e).__name__}: {e}); "
                        "is it a complete GGUF file?") from None


def model_shape(spec: str, *, local_only: bool = False) -> ModelShape:
    """The shape of ``spec`` (alias, HF directory, hub id or ``.gguf``) from its config; no weights are read.

    Args:
        spec: what the user passed to ``--model``.
        local_only: never reach the hub: a hub id must be in the local HF cache, else :class:`ConfigNotCached`
            (validation uses this; otherwise ``HF_HUB_OFFLINE`` decides, as for :func:`load_model`).

    Raises:
        UserError: the config cannot be read (ConfigNotCached for an uncached hub id).
    """
    from coloc_ray.models.resolve import first_line, resolve_model_dir

    path, extra = resolve_model_dir(spec)
    if "gguf_file" in extra:
        return gguf_shape(Path(path) / extra["gguf_file"])
    from transformers import AutoConfig

    local = Path(path).is_dir()
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=local_only or local)
    except OSError as e:
        if local:
            raise UserError(f"--model {spec!r}: cannot read its config ({first_line(e)}); fix or re-download "
                            "config.json") from None
        raise ConfigNotCached(f"--model {spec!r}: its config is not in the local HF cache and the hub is not "
                              f"reachable ({first_line(e)}); download it first (hf download {spec} "
                              "config.json)") from None
    except ValueError as e:  # not JSON / not an object / an unknown model_type
        raise UserError(f"--model {spec!r}: cannot read its config ({first_line(e)}); fix or re-download "
                        "config.json") from None
    return shape_from_config(cfg)
