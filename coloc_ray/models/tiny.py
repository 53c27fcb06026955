"""Tiny random GQA models built in-process (tests, CI, smoke runs): no hub, no download.

The tokenizer is byte-level (256 byte tokens + ChatML specials) with a ChatML chat template, so the
chat/assistant-mask code paths run exactly as on SmolLM2.
"""

from __future__ import annotations

import torch

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


def build_tiny(name: str = "tiny-gqa", seed: int = 0):
    """Build (model, tokenizer) for a tiny alias; the same seed gives bit-identical weights everywhere."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, layers, hidden, heads, kv, inter = TINY_SHAPES[name]
    tok = byte_tokenizer()
    cfg = AutoConfig.for_model(
        model_type, vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=hidden // heads, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg._name_or_path = name
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.eval()
    return model, tok
