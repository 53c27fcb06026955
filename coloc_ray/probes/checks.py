"""Argument checks shared by the probe API and CLI; torch-free, so a user mistake costs no heavy import."""

from __future__ import annotations

import math
from typing import Sequence

from coloc_ray.errors import UserError
from coloc_ray.probes.pooling import POOLINGS, get_pooling

__all__ = ["POOLINGS", "check_num_workers", "check_pooling", "check_rope_args", "check_top_k", "model_identity",
           "model_ref"]


def check_pooling(pooling: str, sink_multiple: float) -> None:
    """UserError for an unknown pooling or a sink multiple that is not > 1."""
    get_pooling(pooling)  # one line listing the registered poolings (probes/pooling.py)
    if not sink_multiple > 1.0:
        raise UserError(f"--sink-multiple {sink_multiple!r}: must be > 1 (a multiple of the median token norm)")


def check_top_k(top_k: int | None, num_layers: int, default: int = 10) -> int:
    """The k to use: ``None`` means ``min(default, L)``; an explicit k outside 1..L is a UserError."""
    if top_k is None:
        return min(default, num_layers)
    if not 1 <= top_k <= num_layers:
        raise UserError(f"--top-k {top_k}: must be between 1 and the model's {num_layers} layers")
    return top_k


def check_rope_args(factors: Sequence[float], layers, num_layers: int, max_len: int) -> tuple[list, list]:
    """Validated ``(factors, sorted layers)``; ``layers=None`` means every layer."""
    facs = [float(f) for f in factors]
    if not facs or any(not math.isfinite(f) or f <= 0 for f in facs):
        raise UserError(f"--factor {list(factors)}: give one or more finite factors > 0 (e.g. --factor 2.0)")
    if len(set(facs)) != len(facs):
        raise UserError(f"--factor {facs}: each factor once")
    if max_len < 2:
        raise UserError(f"--max-len {max_len}: must be >= 2 (the loss predicts token t+1 from token t)")
    lays = list(range(num_layers)) if layers is None else [int(l) for l in layers]
    bad = [l for l in lays if not 0 <= l < num_layers]
    if not lays or bad or len(set(lays)) != len(lays):
        raise UserError(f"--layers {lays}: give distinct layer indices in 0..{num_layers - 1}")
    return facs, sorted(lays)


def model_ref(model) -> tuple:
    """(what Ray workers load, number of decoder layers), reading only the model's config
    (``models.model_shape``: config.json or the GGUF metadata, no weights). A ``models.ModelRef`` is passed on
    as it is: each task loads it with ``load_model(ref)``, which checks its node has the resolved weights."""
    from coloc_ray.models.ref import ModelRef

    if isinstance(model, ModelRef):
        return model, model.shape.num_layers
    if not isinstance(model, str):  # a LoadedModel
        return model.spec, int(model.info.num_layers)
    from coloc_ray.models.shape import model_shape

    return model, model_shape(model).num_layers


def check_num_workers(num_workers: int | None) -> None:
    if num_workers is not None and num_workers < 0:
        raise UserError(f"--num-workers {num_workers}: use 0 (no Ray) or a positive number of Ray tasks")


def model_identity(model) -> tuple[str, str | None]:
    """(spec string, weights fingerprint) a probe's output JSON records as ``model`` / ``model_fingerprint``:
    a ModelRef's or LoadedModel's own, else the spec's on this node (cached file hashes)."""
    from coloc_ray.models.ref import spec_fingerprint

    if isinstance(model, str):
        return model, spec_fingerprint(model)
    return model.spec, model.fingerprint  # a ModelRef or a LoadedModel
