"""A tiny randomly initialised Llama (+ a small byte-level BPE tokenizer) for fast text-trainer tests."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "a thing is a thing that is a thing",
    "my friend likes red apples and green pears",
    "question: what colour is it? answer: it is blue",
    "hello world, this is a small test of a tiny model",
]


def write_tiny_llama(folder: Path, *, tied: bool = True, seed: int = 0) -> str:
    """Save a 2-layer Llama with a ~300-token vocabulary into folder; returns the folder."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=320, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
