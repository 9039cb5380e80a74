"""Randomly initialised causal LMs for tests and benchmarks (nothing is downloaded).

A small byte-level BPE tokenizer trained on a few sentences, and a Llama or Qwen2 config of a
chosen size: "tiny" (2 layers, width 32) for unit tests, "qwen2.5-0.5b" (Qwen2.5-0.5B's shape,
with its padded 151,936-row vocabulary) for the GPU benchmark.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "a thing is a thing that is a thing",
    "my friend likes red apples and green pears",
    "question: what colour is it? answer: it is blue",
    "hello world, this is a small test of a tiny model",
]
SHAPES = {
    "tiny": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "qwen2.5-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151_936,
    },
}


def write_random_causal_lm(
    folder: Path, *, shape: str = "tiny", tied: bool = True, seed: int = 0, extra_vocab: int = 0
) -> str:
    """Save a random causal LM + tokenizer into folder; `extra_vocab` pads the embedding past the tokenizer."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if (folder / "config.json").is_file():
        return str(folder)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=320, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    sizes = dict(SHAPES[shape])
    vocab_size = sizes.pop("vocab_size", len(tokenizer) + extra_vocab)
    common = {
        "vocab_size": vocab_size,
        "max_position_embeddings": 512,
        "tie_word_embeddings": tied,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
        **sizes,
    }
    torch.manual_seed(seed)
    model = (
        Qwen2ForCausalLM(Qwen2Config(**common)) if shape.startswith("qwen") else LlamaForCausalLM(LlamaConfig(**common))
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
