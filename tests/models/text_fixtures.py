"""A tiny randomly initialised Llama (+ a small byte-level BPE tokenizer) for fast text-trainer tests."""

from __future__ import annotations

from pathlib import Path

from models.text.synthetic import write_random_causal_lm


def write_tiny_llama(folder: Path, *, tied: bool = True, seed: int = 0, extra_vocab: int = 0) -> str:
    """Save a 2-layer Llama (width 32, ~320-token vocabulary) into folder; returns the folder."""
    return write_random_causal_lm(folder, shape="tiny", tied=tied, seed=seed, extra_vocab=extra_vocab)
