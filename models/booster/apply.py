"""Attaching many predicted concepts to one frozen base at once (for booster training).

Each batch row belongs to one concept set; hooks write that set's token vectors into the
text encoder's embedding output and add that set's LoRA delta (x A^T B^T, the same math as
peft's LoRA at scale 1) to each targeted projection, so one forward pass serves them all.
On SDXL a token vector spans both encoders (768 + 1280 wide): each encoder's hook writes its slice.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from models.trainer.base_model import BaseComponents
from models.trainer.loss import denoising_target
from models.trainer.placeholders import PlaceholderHooks
from models.trainer.sdxl import concept_model, encode, time_ids

Ids = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""Token ids of a batch of prompts: one tensor, or (first, second) encoder's for SDXL."""


def base_fingerprint(base: BaseComponents) -> str:
    """Identifies a base model's weights independent of dtype (a few rounded embedding rows)."""
    rows = base.text_encoder.get_input_embeddings().weight[:8].detach().float().cpu()
    return hashlib.sha256(str(torch.round(rows, decimals=2).tolist()).encode()).hexdigest()[:16]


def word_embedding(base: BaseComponents, word: str = "object") -> torch.Tensor:
    """A single-token word's input embedding (float32, CPU): the token init, or a word set's target
    (SDXL: its rows in both encoders, side by side)."""
    rows = []
    for tokenizer, encoder in zip(_tokenizers(base), base.text_encoders, strict=True):
        ids = tokenizer(word, add_special_tokens=False).input_ids
        rows.append(encoder.get_input_embeddings().weight[ids[0]].detach().float().cpu())
    return torch.cat(rows)


def _tokenizers(base: BaseComponents) -> list:
    return [tokenizer for tokenizer in (base.tokenizer, base.tokenizer_2) if tokenizer is not None]


class PlaceholderTokenizers:
    """Copies of the base model's tokenizer(s) with placeholder tokens added, giving each prompt's ids."""

    def __init__(self, base: BaseComponents, tokens: Sequence[str]) -> None:
        self.tokenizers = [copy.deepcopy(tokenizer) for tokenizer in _tokenizers(base)]
        for tokenizer in self.tokenizers:
            tokenizer.add_tokens(list(tokens))
        self.token_ids = [[tokenizer.convert_tokens_to_ids(token) for token in tokens] for tokenizer in self.tokenizers]

    def __call__(self, prompts: Sequence[str], device: torch.device) -> Ids:
        ids = [
            tokenizer(
                list(prompts),
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            for tokenizer in self.tokenizers
        ]
        return ids[0] if len(ids) == 1 else (ids[0], ids[1])

    def batched(self, base: BaseComponents, layout: dict[str, list[int]]) -> BatchedConcepts:
        """Hooks for these placeholder tokens on the base's encoder(s) and the LoRA `layout`."""
        second = self.token_ids[1] if len(self.token_ids) > 1 else None
        return BatchedConcepts(base, self.token_ids[0], layout, token_ids_2=second)


def lora_layout(base: BaseComponents, rank: int) -> dict[str, list[int]]:
    """The exact peft keys and shapes the trainer's UNet LoRA has for this base and rank."""
    concept = concept_model(base, token="<layout-probe>", num_vectors=1)
    try:
        concept.add_lora(rank=rank, alpha=float(rank), text_encoder=False)
        unet_state, _ = concept.lora_state()
        assert unet_state is not None
        return {key: list(value.shape) for key, value in unet_state.items()}
    finally:
        concept.close()


class BatchedConcepts:
    """Hooks that apply per-set embeddings and LoRA tensors to a batch grouped by set."""

    def __init__(
        self,
        base: BaseComponents,
        token_id: int | list[int],
        layout: dict[str, list[int]],
        *,
        token_ids_2: list[int] | None = None,
    ) -> None:
        """`token_ids_2`: the tokens' ids in SDXL's second tokenizer (default: the same ids)."""
        self.base = base
        # One id per token vector (a multi-vector token is several placeholder tokens).
        self.token_ids = [token_id] if isinstance(token_id, int) else list(token_id)
        self.widths = base.text_widths
        self.rows_per_set = 1
        self.embedding: torch.Tensor | None = None
        self.lora: dict[str, torch.Tensor] = {}
        modules = dict(base.unet.named_modules())
        self.targets = sorted({key.rsplit(".lora_", 1)[0] for key in layout})
        self._placeholders = [
            PlaceholderHooks(
                base.text_encoder.get_input_embeddings(),
                is_placeholder=lambda ids: self._is_placeholder(ids, self.token_ids),
                vectors=lambda ids, output: self._vectors(ids, output, self.token_ids, 0),
            )
        ]
        if base.text_encoder_2 is not None:
            second = list(token_ids_2 or self.token_ids)
            self._placeholders.append(
                PlaceholderHooks(
                    base.text_encoder_2.get_input_embeddings(),
                    is_placeholder=lambda ids: self._is_placeholder(ids, second),
                    vectors=lambda ids, output: self._vectors(ids, output, second, 1),
                )
            )
        self.hooks: list[torch.utils.hooks.RemovableHandle] = []
        for name in self.targets:
            self.hooks.append(modules[name].register_forward_hook(self._lora_hook(name)))

    def set(self, embedding: torch.Tensor, lora: dict[str, torch.Tensor], rows_per_set: int) -> None:
        """embedding [sets, vectors, width]; lora key -> [sets, *shape]; rows grouped per set."""
        if embedding.shape[1] != len(self.token_ids):
            raise ValueError(f"{embedding.shape[1]} vectors for {len(self.token_ids)} placeholder tokens")
        self.embedding, self.lora, self.rows_per_set = embedding, lora, rows_per_set

    @staticmethod
    def _is_placeholder(ids: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
        return torch.isin(ids, torch.tensor(token_ids, device=ids.device))

    def _vectors(self, ids: torch.Tensor, output: torch.Tensor, token_ids: list[int], encoder: int) -> torch.Tensor:
        """Each row's set's vector (the encoder's slice of it) for each placeholder id (its index in token_ids)."""
        assert self.embedding is not None
        start = sum(self.widths[:encoder])
        embedding = self.embedding[..., start : start + self.widths[encoder]]
        per_row = embedding.repeat_interleave(self.rows_per_set, dim=0)  # [rows, vectors, width]
        if per_row.shape[0] != output.shape[0]:  # text encoded once per set (e.g. unconditional batches)
            per_row = embedding
        slot = torch.zeros_like(ids)
        for index, token_id in enumerate(token_ids):
            slot = torch.where(ids == token_id, index, slot)
        return per_row[torch.arange(ids.shape[0], device=ids.device)[:, None], slot]  # [rows, seq, width]

    def _lora_hook(self, name: str):
        def hook(module, args, output):
            if not self.lora:
                return output
            (x,) = args[:1]
            a = self.lora[f"{name}.lora_A.weight"]  # [sets, r, in]
            b = self.lora[f"{name}.lora_B.weight"]  # [sets, out, r]
            sets = a.shape[0]
            grouped = x.reshape(sets, -1, x.shape[-1])
            delta = torch.bmm(torch.bmm(grouped, a.transpose(1, 2)), b.transpose(1, 2))
            return output + delta.reshape(output.shape).to(output.dtype)

        return hook

    def close(self) -> None:
        for placeholders in self._placeholders:
            placeholders.remove()
        for hook in self.hooks:
            hook.remove()
        self.hooks = []


def per_row_denoising_loss(
    base: BaseComponents, latents: torch.Tensor, ids: Ids, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The denoising loss of each batch row ([rows]), with whatever BatchedConcepts has set."""
    scheduler = base.noise_scheduler
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if isinstance(ids, tuple):
        hidden, pooled = encode(base, *ids)
        scale = 2 ** (len(base.vae.config.block_out_channels) - 1)
        size = (latents.shape[-2] * scale, latents.shape[-1] * scale)
        added = {"text_embeds": pooled, "time_ids": time_ids(size, latents.shape[0], latents.device)}
        prediction = base.unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample
    else:
        prediction = base.unet(noisy, timesteps, base.text_encoder(ids)[0]).sample
    target = denoising_target(scheduler, latents, noise, timesteps)
    return F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
