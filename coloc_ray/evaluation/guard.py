"""Adapter guard: an evaluated adapter must change the model, or the comparison between arms is void.

On a fixed probe text the adapted model's logits are compared with (a) the same model with LoRA disabled
(PEFT's ``disable_adapter``) and (b) the same model with GARFA's rho set to 0 (alpha = 1 exactly, which equals
the unpatched model, METHOD 5). Whichever part the adapter has must move the logits; if not, evaluation
stops with a clear error instead of silently reporting base-model scores as an arm.
"""

from __future__ import annotations

import contextlib

from coloc_ray.errors import UserError

# Long enough that rotated keys sit at many positions (GARFA cannot act at position 0).
PROBE_TEXT = ("def is_palindrome(s):\n    return s == s[::-1]\n\n"
              "Water freezes at 0 degrees Celsius and boils at 100 degrees Celsius at sea level.")
MIN_DIFF = 1e-6  # max |delta logit| below this counts as "no effect" (fp32 noise of identical paths is 0)


def _logits(model, tokenizer):
    import torch

    enc = tokenizer(PROBE_TEXT, return_tensors="pt").to(next(model.parameters()).device)
    with torch.inference_mode():
        return model(**enc).logits.float()


@contextlib.contextmanager
def _garfa_off(model):
    from coloc_ray.garfa import get_garfa

    scalers = get_garfa(model)
    saved = scalers.rho.data.clone()
    scalers.rho.data.zero_()
    try:
        yield
    finally:
        scalers.rho.data.copy_(saved)


def has_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def has_garfa(model) -> bool:
    try:
        from coloc_ray.garfa import get_garfa
    except ImportError:
        return False
    return get_garfa(model) is not None


def check_adapter_effect(model, tokenizer, adapter: str = "") -> dict:
    """Max |logit change| from LoRA and from GARFA on the probe; UserError if a present part changes nothing.

    Returns:
        ``{"lora_max_abs_logit_diff": float | None, "garfa_max_abs_logit_diff": float | None}``.
    """
    lora, garfa = has_lora(model), has_garfa(model)
    if not (lora or garfa):
        raise UserError(f"adapter {adapter!r}: the loaded model has neither LoRA nor GARFA; "
                        "is this a `coloc finetune` output directory?")
    full = _logits(model, tokenizer)
    out = {"lora_max_abs_logit_diff": None, "garfa_max_abs_logit_diff": None}
    if lora:
        with model.disable_adapter():
            out["lora_max_abs_logit_diff"] = float((full - _logits(model, tokenizer)).abs().max())
    if garfa:
        with _garfa_off(model):
            out["garfa_max_abs_logit_diff"] = float((full - _logits(model, tokenizer)).abs().max())
    for part, key in (("LoRA", "lora_max_abs_logit_diff"), ("GARFA", "garfa_max_abs_logit_diff")):
        if out[key] is not None and out[key] < MIN_DIFF:
            raise UserError(
                f"adapter {adapter!r}: its {part} part leaves the logits unchanged (max |diff| = {out[key]:.2e}"
                f" on the probe): the weights are zero/untrained or were not loaded; retrain or pick another "
                "adapter (guard=false skips this check)")
    return out
