"""LEAP's dataset builder for any base model: images the model draws of its own words.

    python -m models.booster.dataset --base-model leap-tiny --out runs/booster-data/leap-tiny

For each single-token word of the base model's vocabulary (a given word list, or the
tokenizer's alphabetic words), the base pipeline generates `--images` pictures of
"a photo of a {word}". A set (those images, that word) pairs images with the word's
embedding: the booster learns to land near it. Resumable: finished words are skipped.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from models.registry import load_registry
from models.trainer.base_model import BaseComponents, load_base, pick_device, weight_dtype_for
from models.trainer.defaults import resolve_base_model
from models.trainer.evaluate import pipeline_for, sample_images

INDEX_FILE = "index.json"


def single_token_words(base: BaseComponents, limit: int, words: list[str] | None = None) -> list[str]:
    """Words that the tokenizer keeps whole (LEAP's source of (image, embedding) pairs)."""
    if words is None:
        vocab = base.tokenizer.get_vocab()
        words = sorted(token[:-4] for token in vocab if re.fullmatch(r"[a-z]{3,}</w>", token))
    whole = [w for w in words if len(base.tokenizer(w, add_special_tokens=False).input_ids) == 1]
    return whole[:limit]


def build(
    base: BaseComponents, words: list[str], out_dir: Path, *, images_per_word: int, steps: int, guidance_scale: float
) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / INDEX_FILE
    index = json.loads(index_path.read_text()) if index_path.exists() else {"words": {}}
    index_path.write_text(json.dumps(index, indent=1))
    pipeline = pipeline_for(base)
    for word in tqdm(words, desc="words"):
        if word in index["words"]:
            continue
        seeds = [hash_seed(word, i) for i in range(images_per_word)]
        images = sample_images(pipeline, [f"a photo of a {word}"], seeds, steps=steps, guidance_scale=guidance_scale)
        files = []
        for i, image in enumerate(images):
            name = f"{word}-{i}.png"
            image.save(out_dir / name)
            files.append(name)
        index["words"][word] = {"token_id": base.tokenizer(word, add_special_tokens=False).input_ids[0], "files": files}
        index_path.write_text(json.dumps(index, indent=1))  # after every word: a rerun resumes
    return index


def hash_seed(word: str, i: int) -> int:
    return (sum(ord(c) * 131**k for k, c in enumerate(word)) + 7919 * i) % (2**31)


def load_sets(directory: Path) -> list[tuple[str, list[Image.Image]]]:
    """(word, images) for every word of a built dataset."""
    index = json.loads((directory / INDEX_FILE).read_text())
    return [
        (word, [Image.open(directory / name).convert("RGB") for name in entry["files"]])
        for word, entry in index["words"].items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="leap-tiny")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--words", type=int, default=1000, help="at most this many words")
    parser.add_argument("--word-list", type=Path, help="one word per line (default: the tokenizer's words)")
    parser.add_argument("--images", type=int, default=8, help="images per word")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    args = parser.parse_args()
    device = pick_device()
    source = resolve_base_model(args.base_model, load_registry())
    base = load_base(source, device, weight_dtype_for(args.mixed_precision, device))
    given = args.word_list.read_text().split() if args.word_list else None
    words = single_token_words(base, args.words, given)
    with torch.no_grad():
        index = build(
            base, words, args.out, images_per_word=args.images, steps=args.steps, guidance_scale=args.guidance
        )
    print(f"{len(index['words'])} words in {args.out}")


if __name__ == "__main__":
    main()
