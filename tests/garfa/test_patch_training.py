"""Gradients reach every rho, rho alone can learn, and KV-cached generation equals uncached."""

import pytest
import torch

from coloc_ray.garfa import apply_garfa
from tests.garfa.conftest import sharpen


def test_gradients_reach_every_rho(tiny_model, ids):
    model = sharpen(tiny_model("tiny-gqa", "sdpa"))
    scalers = apply_garfa(model, [0, 2, 3])
    assert scalers.rho.requires_grad
    model.train()
    model(ids, labels=ids).loss.backward()
    assert scalers.rho.grad is not None and scalers.rho.grad.shape == (3, 2)
    assert (scalers.rho.grad != 0).all(), scalers.rho.grad


def test_training_only_rho_decreases_the_loss(tiny_model, ids):
    """Recover a teacher's rho: the loss (logit MSE) must fall far, with nothing but rho trainable."""
    model = sharpen(tiny_model("tiny-gqa", "sdpa"))
    scalers = apply_garfa(model, [1, 3])
    with torch.no_grad():
        scalers.rho.copy_(torch.tensor([[0.9, -0.7], [-0.5, 1.2]]))
        target = model(ids).logits
        scalers.rho.zero_()
    for p in model.parameters():
        p.requires_grad_(False)
    scalers.rho.requires_grad_(True)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "garfa" not in n}
    opt = torch.optim.Adam([scalers.rho], lr=0.1)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(ids).logits, target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if "garfa" not in n)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("alias", ["tiny-gqa", "tiny-qwen2", "tiny-mistral"])
def test_cached_decoding_equals_full_forward(tiny_model, ids, alias, impl):
    model = sharpen(tiny_model(alias, impl))
    scalers = apply_garfa(model, [0, 1, 2, 3])
    with torch.no_grad():
        scalers.rho.copy_(torch.tensor([[1.5, -1.5], [0.8, -0.3], [-1.0, 2.0], [0.4, 0.9]]))
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :10], use_cache=True)
        torch.testing.assert_close(out.logits, full[:, :10], rtol=1e-5, atol=1e-5)
        past = out.past_key_values
        for t in range(10, ids.shape[1]):  # one token at a time through the cache
            out = model(ids[:, t:t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            torch.testing.assert_close(out.logits[:, -1], full[:, t], rtol=1e-5, atol=1e-5)


def test_greedy_generation_with_cache_equals_without(tiny_model):
    model = sharpen(tiny_model("tiny-gqa", "sdpa"), factor=12.0)
    scalers = apply_garfa(model, [0, 1, 2, 3])
    with torch.no_grad():
        scalers.rho.copy_(torch.tensor([[1.5, -1.5], [0.8, -0.3], [-1.0, 2.0], [0.4, 0.9]]))
    # a left-padded batch: generate derives position ids from the mask, GARFA must follow them
    prompt = torch.tensor([[7, 7, 40, 41, 42, 43, 44], [50, 51, 52, 53, 54, 55, 56]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kw)
        plain = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(cached, plain), (cached, plain)
    assert len(set(cached[0, 7:].tolist())) > 1  # not a degenerate constant continuation


def test_keys_follow_the_given_position_ids(tiny_model):
    """Left padding shifts positions: keys must use the position ids the model got, not the cache length."""
    model = sharpen(tiny_model("tiny-gqa", "sdpa"), factor=12.0)
    scalers = apply_garfa(model, [0, 1, 2, 3])
    with torch.no_grad():
        scalers.rho.copy_(torch.tensor([[1.5, -1.5], [0.8, -0.3], [-1.0, 2.0], [0.4, 0.9]]))
    seq = torch.tensor([[40, 41, 42, 43, 44, 45]])
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = model(seq).logits
        shifted = model(padded, attention_mask=mask, position_ids=pos).logits[:, 3:]
    torch.testing.assert_close(shifted, alone, rtol=1e-4, atol=1e-4)
