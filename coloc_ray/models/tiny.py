"""Tiny random GQA models built in-process (tests, CI, smoke runs): no hub, no download.

The tokenizer is byte-level (256 byte tokens + ChatML specials) with a ChatML chat template, so the
chat/assistant-mask code paths run exactly as on SmolLM2. Every name in ``TINY_SHAPES`` is a ``--model`` alias
(``loading.py``); torch is imported on build, so the alias table costs no heavy import.
"""

from __future__ import annotations

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

TINY_SHAPES = {
    # name: (model_type, layers, hidden, heads, kv_heads, intermediate)
    "tiny-gqa": ("llama", 4, 64, 4, 2, 128),
    "tiny-qwen2": ("qwen2", 4, 64, 4, 2, 128),
    "tiny-mistral": ("mistral", 4, 64, 4, 2, 128),
    "tiny-mha": ("llama", 2, 64, 4, 4, 128),
    "tiny-qwen3": ("qwen3", 4, 64, 4, 2, 128),
    "tiny-gemma2": ("gemma2", 4, 64, 4, 2, 128),
    "tiny-gemma3": ("gemma3_text", 4, 64, 4, 2, 128),
    "tiny-phi3": ("phi3", 4, 64, 4, 2, 128),
    "tiny-qwen3-moe": ("qwen3_moe", 4, 64, 4, 2, 128),
}

# Each family's quirks, switched on at sizes where a 24-token test sees them (docs/MODELS.md):
TINY_QUIRKS = {
    # q_norm / k_norm are always there; their weights are drawn away from 1 (see build_tiny).
    "tiny-qwen3": {},
    # Layers alternate sliding (window 6) / global; query_pre_attn_scalar != head_dim; both soft-caps small
    # enough to bite on random weights (the real ones: 50 on attention scores, 30 on logits); tied embeddings
    # (vLLM's Gemma 2 has no separate lm_head).
    "tiny-gemma2": {"sliding_window": 6, "query_pre_attn_scalar": 24, "attn_logit_softcapping": 2.0,
                    "final_logit_softcapping": 3.0, "tie_word_embeddings": True,
                    "layer_types": ["sliding_attention", "full_attention"] * 2},
    # Sliding layers rotate with base 10k, global ones with base 1M and linear scaling x8 (gemma-3-4b+ style).
    "tiny-gemma3": {"sliding_window": 6, "query_pre_attn_scalar": 24,
                    "layer_types": ["sliding_attention", "full_attention"] * 2,
                    "rope_parameters": {
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}},
    # Fused qkv_proj / gate_up_proj, and Phi-4-mini's partial rotary (3/4 of each head rotates).
    "tiny-phi3": {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                      "partial_rotary_factor": 0.75}},
    # 4 experts, top-2 routing, every layer sparse (as Qwen3-30B-A3B).
    "tiny-qwen3-moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                       "norm_topk_prob": True},
}


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: every UTF-8 byte is a token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>",
        unk_token="<|endoftext|>", additional_special_tokens=SPECIALS,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "right"
    return fast


def build_tiny(name: str = "tiny-gqa", seed: int = 0, **overrides):
    """Build (model, tokenizer) for a tiny alias; the same seed gives bit-identical weights everywhere.

    ``overrides`` change config fields (e.g. ``hidden_size=128, head_dim=32`` for vLLM's CPU attention, which
    needs head_dim >= 32); the aliases themselves never pass any.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, layers, hidden, heads, kv, inter = TINY_SHAPES[name]
    tok = byte_tokenizer()
    kw = dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=hidden // heads, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    kw.update(TINY_QUIRKS.get(name, {}))
    kw.update(overrides)
    cfg = AutoConfig.for_model(model_type, **kw)
    cfg._name_or_path = name
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        if name in TINY_QUIRKS:
            _jitter_norms(model)
    model.eval()
    return model, tok


def _jitter_norms(model) -> None:
    """Draw every norm weight away from its init (ones, or zeros for Gemma's ``1 + w``), so a test that
    forgets a q/k norm or mixes up Gemma's offset fails (the older tiny aliases keep their plain init)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.rsplit(".", 2)[-2] and p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
