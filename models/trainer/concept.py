"""One job's trainable concept on top of shared, frozen base components.

The new token's vectors live in a separate parameter that a forward hook writes into the
text encoder's embedding output, and LoRA goes in through peft adapters. So the shared
base modules are never written to, and `close()` removes every trace (hooks, adapters,
the tokenizer copy), leaving the cached pipeline exactly as it was loaded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from diffusers.utils.peft_utils import recurse_remove_peft_layers
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict

from models.trainer.base_model import BaseComponents
from models.trainer.errors import InvalidConfigError
from models.trainer.placeholders import PlaceholderHooks

UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
ADAPTER_NAME = "leap"


@dataclass
class InitialState:
    """A starting point: token vectors [num_vectors, width] and optional peft-format LoRA tensors."""

    embedding: torch.Tensor
    unet_lora: dict[str, torch.Tensor] | None = None
    text_encoder_lora: dict[str, torch.Tensor] | None = None
    note: str = ""
    """Recorded in the manifest next to the init, e.g. what part of a booster's prediction was used."""
    name: str = "booster"
    """Names this start among the guard's candidates when a booster resolver offers several."""
    fresh_unet_lora: dict[str, torch.Tensor] | None = None
    """The UNet LoRA to train from where this start's own LoRA is not taken (a booster's fixed
    down-projections with zero up-projections): its embedding-only start then shares A with its
    predicted LoRA. None: the job's freshly initialised LoRA."""

    def embedding_only(self, embedding: torch.Tensor | None = None) -> InitialState:
        """This start without its predicted LoRA (with `embedding` in place of its own, if given)."""
        return InitialState(
            embedding=self.embedding if embedding is None else embedding,
            unet_lora=self.fresh_unet_lora,
            note=self.note,
            name=self.name,
            fresh_unet_lora=self.fresh_unet_lora,
        )


def placeholder_tokens(token: str, num_vectors: int) -> list[str]:
    """diffusers' multi-vector naming: <leap>, <leap>_1, <leap>_2, ..."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


class ConceptModel:
    """Placeholder token + optional LoRA attached to shared base components for one job."""

    def __init__(self, base: BaseComponents, *, token: str, num_vectors: int) -> None:
        self.base = base
        self.token = token
        self.tokens = placeholder_tokens(token, num_vectors)
        self.tokenizer = copy.deepcopy(base.tokenizer)  # the shared tokenizer never gains tokens
        if any(t in self.tokenizer.get_vocab() for t in self.tokens):
            raise InvalidConfigError("token", f"{token!r} is already a word of the base model's vocabulary")
        self.base_vocab_size = len(self.tokenizer)
        self.tokenizer.add_tokens(self.tokens)
        self.token_ids = self.tokenizer.convert_tokens_to_ids(self.tokens)
        if any(i < self.base_vocab_size for i in self.token_ids):
            raise InvalidConfigError("token", f"{token!r} does not become a new single token")
        width = base.embedding_width
        self.embedding = torch.nn.Parameter(torch.zeros(num_vectors, width, device=base.device, dtype=torch.float32))
        self.unet_lora = False
        self.text_encoder_lora = False
        # Placeholder ids are past the frozen table: look up a valid id, then overwrite its output.
        self._placeholders = PlaceholderHooks(
            base.text_encoder.get_input_embeddings(),
            is_placeholder=lambda ids: ids >= self.base_vocab_size,
            vectors=self._vectors,
        )

    def _vectors(self, ids: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return self.embedding.to(output.dtype)[(ids - self.base_vocab_size).clamp(min=0)]

    # ---- initialisation -------------------------------------------------------------------
    def init_from_token(self, initializer: str) -> None:
        ids = self.base.tokenizer(initializer, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise InvalidConfigError("initializer_token", f"{initializer!r} must be a single token")
        weight = self.base.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            self.embedding.copy_(weight[ids[0]].float().expand_as(self.embedding))

    def init_random(self, generator: torch.Generator) -> None:
        weight = self.base.text_encoder.get_input_embeddings().weight.float()
        noise = torch.randn(self.embedding.shape, generator=generator)
        with torch.no_grad():
            self.embedding.copy_(weight.mean(0).cpu() + noise * weight.std(0).cpu())

    def init_from_state(self, state: InitialState) -> None:
        if tuple(state.embedding.shape) != tuple(self.embedding.shape):
            raise InvalidConfigError(
                "init",
                f"initial embedding has shape {tuple(state.embedding.shape)}, this job needs "
                f"{tuple(self.embedding.shape)} (num_vectors x the base model's embedding width)",
            )
        with torch.no_grad():
            self.embedding.copy_(state.embedding.to(self.embedding))
        if state.unet_lora and self.unet_lora:
            self._load_lora(self.base.unet, state.unet_lora)
        if state.text_encoder_lora and self.text_encoder_lora:
            self._load_lora(self.base.text_encoder, state.text_encoder_lora)

    @staticmethod
    def _load_lora(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        expected = get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME)
        for key, value in tensors.items():
            if key not in expected or expected[key].shape != value.shape:
                shape = tuple(expected[key].shape) if key in expected else "absent"
                raise InvalidConfigError(
                    "init", f"initial LoRA tensor {key} {tuple(value.shape)} does not fit this model ({shape})"
                )
        set_peft_model_state_dict(module, tensors, adapter_name=ADAPTER_NAME)

    # ---- LoRA ------------------------------------------------------------------------------
    def add_lora(self, *, rank: int, alpha: float, text_encoder: bool) -> None:
        unet_config = LoraConfig(
            r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=UNET_LORA_TARGETS
        )
        self.base.unet.add_adapter(unet_config, adapter_name=ADAPTER_NAME)
        self.unet_lora = True
        if text_encoder:
            te_config = LoraConfig(
                r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TEXT_ENCODER_LORA_TARGETS
            )
            # peft directly: transformers' add_adapter insists on a newer peft than diffusers needs.
            inject_adapter_in_model(te_config, self.base.text_encoder, adapter_name=ADAPTER_NAME)
            self.text_encoder_lora = True
        for parameter in self.lora_parameters():
            parameter.data = parameter.data.float()  # trainable weights in fp32 under mixed precision

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        modules = [
            m for m, on in ((self.base.unet, self.unet_lora), (self.base.text_encoder, self.text_encoder_lora)) if on
        ]
        return [p for m in modules for n, p in m.named_parameters() if "lora_" in n]

    def lora_state(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
        unet = get_peft_model_state_dict(self.base.unet, adapter_name=ADAPTER_NAME) if self.unet_lora else None
        te = (
            get_peft_model_state_dict(self.base.text_encoder, adapter_name=ADAPTER_NAME)
            if self.text_encoder_lora
            else None
        )
        return unet, te

    # ---- use -------------------------------------------------------------------------------
    def prompt(self, template: str) -> str:
        return template.format(" ".join(self.tokens))

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.base.device)
        return self.base.text_encoder(ids)[0]

    def conditioning(self, prompts: list[str], size: tuple[int, int]) -> tuple[torch.Tensor, dict | None]:
        """The UNet's text conditioning for images of `size` (height, width) in pixels: the hidden
        states and the added conditions (SDXL's pooled embeddings and time ids; None here)."""
        return self.encode_prompts(prompts), None

    def close(self) -> None:
        """Remove hooks and adapters: the shared base is left exactly as loaded."""
        self._placeholders.remove()
        if self.unet_lora:
            self.base.unet.unload_lora()  # diffusers' own: removes the layers and the adapter bookkeeping
        if self.text_encoder_lora:
            recurse_remove_peft_layers(self.base.text_encoder)
            if hasattr(self.base.text_encoder, "peft_config"):
                del self.base.text_encoder.peft_config
        self.unet_lora = self.text_encoder_lora = False
        for module in (self.base.unet, self.base.text_encoder):
            module.requires_grad_(False)
            module.eval()
