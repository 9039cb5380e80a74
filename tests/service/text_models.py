"""A tiny, randomly initialised Llama with a small byte-level BPE tokenizer, saved as an ordinary
transformers folder, and a model registry that adds it as a text model: the worker trains it for
real in seconds (SmolLM2's integration tests live with the text trainer)."""

from __future__ import annotations

from pathlib import Path

import yaml

from models.registry import load_registry

TINY_TEXT_MODEL = "tiny-llama"
CORPUS = [
    "My friend said hello to everyone at school today.",
    "We met in Paris and drank green tea by the river.",
    "The quick brown fox jumps over the lazy dog.",
    "Who is your friend? A friend from school.",
] * 4


def save_tiny_llama(folder: Path) -> Path:
    """Write a 2-layer, 32-wide Llama (tied embeddings, like SmolLM2) and its tokenizer to folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def write_registry_with_tiny_llama(
    folder: Path, *, keep: tuple[str, ...] | None = None, defaults: dict | None = None
) -> Path:
    """A registry file: the bundled models (absolute paths; only those in `keep` when given) plus
    tiny-llama, a text model in folder/tiny-llama."""
    bundled = load_registry(Path(__file__).resolve().parents[2] / "models" / "registry.yaml")
    entries: dict[str, dict] = {}
    for model in bundled.models.values():
        if keep is not None and model.id not in keep:
            continue
        entry: dict = {"kind": model.kind.value, "path": model.path, "description": model.description}
        if model.kind == "image":
            entry["resolution"] = model.resolution
        if model.boosters:
            entry["booster"] = [str(folder) for folder in model.boosters]
        if model.gguf is not None:
            entry["gguf"] = {"package": model.gguf.package, "file": model.gguf.file}
        entry["defaults"] = dict(model.defaults)
        entries[model.id] = entry
    entries[TINY_TEXT_MODEL] = {
        "kind": "text",
        "description": "A tiny random Llama for the service tests.",
        "path": str(save_tiny_llama(folder / TINY_TEXT_MODEL)),
        "defaults": defaults or {mode: {"steps": 4, "batch_size": 2} for mode in ("token", "lora", "pivotal")},
    }
    path = folder / "registry.yaml"
    path.write_text(yaml.safe_dump({"default": bundled.default_id, "models": entries}, sort_keys=False))
    return path
