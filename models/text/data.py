"""Tokenising text examples into training rows: ids, and labels on what the loss covers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from models.text.errors import InvalidExamplesError
from models.text.examples import TextExample

IGNORE = -100


@dataclass(frozen=True)
class Row:
    """One tokenised example: `labels` is IGNORE where the loss does not apply (the prompt)."""

    ids: list[int]
    labels: list[int]


def where(example: TextExample) -> tuple[str, int | None]:
    """(file, line) of an example's source, "set.jsonl:3" -> ("set.jsonl", 3)."""
    name, _, line = example.source.rpartition(":")
    return (name, int(line)) if name and line.isdigit() else (example.source, None)


def tokenize_example(tokenizer, example: TextExample, *, expand, max_length: int) -> Row:
    """Token ids (+ EOS) of an example and its labels; the loss covers the completion only, if any."""
    prompt = expand(example.prompt) if example.text is None else ""
    text = expand(example.full_text)
    encoding = tokenizer(text, return_offsets_mapping=bool(prompt))
    ids = list(encoding.input_ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)  # learn to stop where the example stops
    if len(ids) > max_length:
        file, line = where(example)
        raise InvalidExamplesError(
            f"example is {len(ids)} tokens, over the limit of {max_length}", file=file, line=line
        )
    labels = list(ids)
    if prompt:
        # A token belongs to the prompt when it ends inside it (a merge across the boundary counts as completion).
        for i, (_, end) in enumerate(encoding.offset_mapping):
            if end <= len(prompt):
                labels[i] = IGNORE
    return Row(ids=ids, labels=labels)


def collate(rows: Sequence[Row], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask and labels (IGNORE on padding)."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row.ids)] = torch.tensor(row.ids)
        labels[i, : len(row.labels)] = torch.tensor(row.labels)
        mask[i, : len(row.ids)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def pad_id_of(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def lm_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions of a batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE
    )
