"""Tiny models for tests that need a real folder, offline: a word-level tokenizer and a random Llama."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["<unk>", "<s>", "</s>", "<pad>", "hello", "world", "the", "a", "(", "A", "B", ")", ".", ","]


def word_tokenizer():
    """A fast tokenizer over ``WORDS`` (whitespace-split), with BOS, EOS, PAD and UNK."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def save_tiny_llama(folder: Path) -> Path:
    """A one-layer random Llama over ``WORDS`` and its tokenizer, saved to ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    LlamaForCausalLM(config).save_pretrained(str(folder))
    word_tokenizer().save_pretrained(str(folder))
    return folder
