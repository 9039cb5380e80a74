"""Build leap-tiny's tokenizer: CLIP's byte-level BPE format (vocab.json + merges.txt).

Every word of the world and of the caption templates becomes exactly one token, by
learning BPE merges on that word list until each word is a single symbol. The 512
byte-level base symbols of CLIP are kept, so any text still tokenizes, and
`tokenizer.add_tokens` adds placeholder tokens the way diffusers' textual inversion does.
Run `python -m models.reference.tokenizer OUT_DIR` to write the files.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from models.reference.world import COLOURS, PATTERNS, SHAPES

TEMPLATE_WORDS = (
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "with",
    "and",
    "photo",
    "picture",
    "rendering",
    "painting",
    "artwork",
    "image",
    "drawing",
    "cropped",
    "clean",
    "close",
    "up",
    "bright",
    "dark",
    "good",
    "nice",
    "small",
    "large",
    "big",
    "style",
    "object",
    "thing",
    "shape",
    "coloured",
    "colored",
    "this",
    "that",
    "one",
    "my",
    "weird",
    "cool",
)
MODEL_MAX_LENGTH = 32
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def world_words() -> list[str]:
    """Every word that must be a single token, in a fixed order."""
    words: list[str] = []
    for word in (*SHAPES, *COLOURS, *PATTERNS, *TEMPLATE_WORDS):
        if word not in words:
            words.append(word)
    return words


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE on the word list until every word is one symbol (deterministic ties)."""
    segmented = {word: [*word[:-1], word[-1] + "</w>"] for word in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols in segmented.values():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += 1
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in segmented.items():
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            segmented[word] = merged


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    base = list(bytes_to_unicode().values())
    tokens = base + [symbol + "</w>" for symbol in base] + ["".join(pair) for pair in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


def write_tokenizer(out_dir: Path) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs for CLIPTokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(world_words())
    vocab = build_vocab(merges)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


if __name__ == "__main__":
    print(write_tokenizer(Path(sys.argv[1] if len(sys.argv) > 1 else "tokenizer")))
