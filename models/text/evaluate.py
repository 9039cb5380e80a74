"""Using and evaluating a trained text concept: reload from artifacts, held-out loss, greedy generation.

All of it works on either a live job (`concept.base.model` with `concept.tokenizer`) or a model
rebuilt from the artifacts by `load_trained`, and is deterministic (no sampling, no dropout).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from models.registry import Registry
from models.text.base_model import resolve_text_model
from models.text.data import collate, lm_loss, pad_id_of, tokenize_example
from models.text.examples import TextExample
from models.text.export import ADAPTER_DIR


def load_trained(
    base_model: str, out_dir: Path, *, registry: Registry, data_dir: str | Path | None = None, device: str = "cpu"
):
    """A fresh base model with the artifacts of out_dir applied: (PeftModel, tokenizer).

    What a user does with the downloaded files: load the base, grow its embeddings to the saved
    tokenizer (only when the token ids lie past them), then `PeftModel.from_pretrained`.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = Path(out_dir) / ADAPTER_DIR
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    source = resolve_text_model(base_model, data_dir, registry)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        # The new rows' values do not matter: the adapter replaces them. mean_resizing=False skips a slow fit.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model = PeftModel.from_pretrained(model, adapter)
    model.to(device)
    model.eval()
    return model, tokenizer


def concept_expander(out_dir: Path):
    """The text rewrite a trained concept needs (<leap> -> <leap><leap>_1... for several vectors)."""
    manifest = json.loads((Path(out_dir) / "manifest.json").read_text())
    token, tokens = manifest["token"], manifest["tokens"]
    return lambda text: text.replace(token, "".join(tokens)) if len(tokens) > 1 else text


@torch.no_grad()
def held_out_loss(
    model, tokenizer, examples: Sequence[TextExample], *, expand=lambda text: text, max_length: int = 8192
) -> float:
    """Mean next-token loss per labelled token (completions only where given) on held-out examples."""
    total, count = 0.0, 0
    pad_id = pad_id_of(tokenizer)
    device = next(model.parameters()).device
    for example in examples:
        row = tokenize_example(tokenizer, example, expand=expand, max_length=max_length)
        tokens = sum(1 for label in row.labels[1:] if label != -100)
        if tokens:
            total += float(lm_loss(model, collate([row], pad_id, device))) * tokens
            count += tokens
    return total / max(count, 1)


@torch.no_grad()
def generate(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 32, expand=lambda text: text
) -> list[str]:
    """Greedy continuations of each prompt (the new text only, special tokens dropped)."""
    device = next(model.parameters()).device
    outputs = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(expand(prompt)).input_ids], device=device)
        new: list[int] = []
        past = None
        step_input = ids
        for _ in range(max_new_tokens):
            result = model(input_ids=step_input, cache=past, use_cache=True)
            past = result.cache
            token = int(result.logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            step_input = torch.tensor([[token]], device=device)
        outputs.append(tokenizer.decode(new, skip_special_tokens=True))
    return outputs
