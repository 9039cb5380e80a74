"""Attaching many predicted concepts to one frozen base at once (for booster training).

Each batch row belongs to one concept set; hooks write that set's token vectors into the
text encoder's embedding output and add that set's LoRA delta (x A^T B^T, the same math as
peft's LoRA at scale 1) to each targeted projection, so one forward pass serves them all.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from models.trainer.base_model import BaseComponents
from models.trainer.concept import ConceptModel
from models.trainer.loss import denoising_target
from models.trainer.placeholders import PlaceholderHooks


def base_fingerprint(base: BaseComponents) -> str:
    """Identifies a base model's weights independent of dtype (a few rounded embedding rows)."""
    rows = base.text_encoder.get_input_embeddings().weight[:8].detach().float().cpu()
    return hashlib.sha256(str(torch.round(rows, decimals=2).tolist()).encode()).hexdigest()[:16]


def word_embedding(base: BaseComponents, word: str = "object") -> torch.Tensor:
    """A single-token word's input embedding (float32, CPU): the token init, or a word set's target."""
    ids = base.tokenizer(word, add_special_tokens=False).input_ids
    return base.text_encoder.get_input_embeddings().weight[ids[0]].detach().float().cpu()


def lora_layout(base: BaseComponents, rank: int) -> dict[str, list[int]]:
    """The exact peft keys and shapes the trainer's UNet LoRA has for this base and rank."""
    concept = ConceptModel(base, token="<layout-probe>", num_vectors=1)
    try:
        concept.add_lora(rank=rank, alpha=float(rank), text_encoder=False)
        unet_state, _ = concept.lora_state()
        assert unet_state is not None
        return {key: list(value.shape) for key, value in unet_state.items()}
    finally:
        concept.close()


class BatchedConcepts:
    """Hooks that apply per-set embeddings and LoRA tensors to a batch grouped by set."""

    def __init__(self, base: BaseComponents, token_id: int | list[int], layout: dict[str, list[int]]) -> None:
        self.base = base
        # One id per token vector (a multi-vector token is several placeholder tokens).
        self.token_ids = [token_id] if isinstance(token_id, int) else list(token_id)
        self.rows_per_set = 1
        self.embedding: torch.Tensor | None = None
        self.lora: dict[str, torch.Tensor] = {}
        modules = dict(base.unet.named_modules())
        self.targets = sorted({key.rsplit(".lora_", 1)[0] for key in layout})
        self._placeholders = PlaceholderHooks(
            base.text_encoder.get_input_embeddings(), is_placeholder=self._is_placeholder, vectors=self._vectors
        )
        self.hooks: list[torch.utils.hooks.RemovableHandle] = []
        for name in self.targets:
            self.hooks.append(modules[name].register_forward_hook(self._lora_hook(name)))

    def set(self, embedding: torch.Tensor, lora: dict[str, torch.Tensor], rows_per_set: int) -> None:
        """embedding [sets, vectors, width]; lora key -> [sets, *shape]; rows grouped per set."""
        if embedding.shape[1] != len(self.token_ids):
            raise ValueError(f"{embedding.shape[1]} vectors for {len(self.token_ids)} placeholder tokens")
        self.embedding, self.lora, self.rows_per_set = embedding, lora, rows_per_set

    def _is_placeholder(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.isin(ids, torch.tensor(self.token_ids, device=ids.device))

    def _vectors(self, ids: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Each row's set's vector for each placeholder id (its index in token_ids)."""
        assert self.embedding is not None
        per_row = self.embedding.repeat_interleave(self.rows_per_set, dim=0)  # [rows, vectors, width]
        if per_row.shape[0] != output.shape[0]:  # text encoded once per set (e.g. unconditional batches)
            per_row = self.embedding
        slot = torch.zeros_like(ids)
        for index, token_id in enumerate(self.token_ids):
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
        self._placeholders.remove()
        for hook in self.hooks:
            hook.remove()
        self.hooks = []


def per_row_denoising_loss(
    base: BaseComponents, latents: torch.Tensor, ids: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The denoising loss of each batch row ([rows]), with whatever BatchedConcepts has set."""
    scheduler = base.noise_scheduler
    prediction = base.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, base.text_encoder(ids)[0]).sample
    target = denoising_target(scheduler, latents, noise, timesteps)
    return F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
