"""One job's trainable text concept on top of a shared, frozen causal LM.

The new token's vectors live in separate parameters: a forward hook writes them into the
input embedding's output, and another appends (or overwrites) their logit columns at the
output head. With tied embeddings (SmolLM2, Qwen2.5 0.5B/1.5B) the output row is the same
parameter as the input row, exactly as in a resized tied model; untied models get a separate
output row. LoRA goes in through peft. The shared base is never written to and `close()`
removes every trace (hooks, LoRA layers, the tokenizer copy).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from diffusers.utils.peft_utils import recurse_remove_peft_layers
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

from models.text.base_model import TextBase
from models.trainer.concept import placeholder_tokens
from models.trainer.errors import InvalidConfigError
from models.trainer.placeholders import PlaceholderHooks

ATTENTION_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_TARGETS = ["gate_proj", "up_proj", "down_proj"]
ADAPTER_NAME = "leap"


def lora_target_modules(targets: str) -> list[str]:
    """Module names LoRA wraps for `attention` or `attention+mlp` (Llama/Qwen2/Mistral naming)."""
    return ATTENTION_TARGETS + (MLP_TARGETS if targets == "attention+mlp" else [])


class TextConcept:
    """The concept token (+ optional LoRA) attached to a shared causal LM for one job."""

    def __init__(self, base: TextBase, *, token: str, num_vectors: int) -> None:
        self.base = base
        self.token = token
        self.tokens = placeholder_tokens(token, num_vectors)
        self.tokenizer = copy.deepcopy(base.tokenizer)  # the shared tokenizer never gains tokens
        vocab = self.tokenizer.get_vocab()
        if any(t in vocab for t in self.tokens):
            raise InvalidConfigError("token", f"{token!r} is already in the base model's vocabulary")
        before = len(self.tokenizer)
        self.tokenizer.add_tokens(self.tokens)
        self.token_ids: list[int] = self.tokenizer.convert_tokens_to_ids(self.tokens)
        if any(i < before for i in self.token_ids):
            raise InvalidConfigError("token", f"{token!r} does not become a new token")
        embeddings = base.model.get_input_embeddings()
        self.num_embeddings = int(embeddings.weight.shape[0])
        self.tied = base.tied
        width = base.width
        self.input_vectors = torch.nn.Parameter(torch.zeros(num_vectors, width, device=base.device))
        self.output_vectors = (
            None if self.tied else torch.nn.Parameter(torch.zeros(num_vectors, width, device=base.device))
        )
        self._ids_tensor = torch.tensor(self.token_ids, device=base.device)
        self.lora = False
        self._placeholders = PlaceholderHooks(
            embeddings,
            is_placeholder=lambda ids: torch.isin(ids, self._ids_tensor),
            vectors=self._vectors,
            out_of_table=lambda ids: ids >= self.num_embeddings,
        )
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        head = base.model.get_output_embeddings()
        if head is not None:
            self._hooks.append(head.register_forward_hook(self._token_logits))

    # ---- hooks -----------------------------------------------------------------------------
    def _vectors(self, ids: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        positions = (ids - self.token_ids[0]).clamp(0, len(self.token_ids) - 1)
        return self.input_vectors.to(output.dtype)[positions]

    @property
    def output_rows(self) -> torch.Tensor:
        return self.input_vectors if self.output_vectors is None else self.output_vectors

    def _token_logits(self, module: torch.nn.Module, args: tuple, logits: torch.Tensor) -> torch.Tensor:
        (hidden,) = args
        extra = F.linear(hidden, self.output_rows.to(hidden.dtype)).to(logits.dtype)
        size = max(logits.shape[-1], self.token_ids[-1] + 1)
        if size > logits.shape[-1]:
            logits = F.pad(logits, (0, size - logits.shape[-1]))
        # Token ids inside the head's range (padded vocabularies such as Qwen's) overwrite their column.
        index = self._ids_tensor.expand(*logits.shape[:-1], len(self.token_ids))
        return logits.scatter(-1, index, extra)

    # ---- initialisation --------------------------------------------------------------------
    def word_ids(self, word: str) -> list[int]:
        return self.base.tokenizer(word, add_special_tokens=False).input_ids

    def init_from_token(self, word: str) -> None:
        """Start every vector from the word's first sub-word (its input and, untied, output rows)."""
        ids = self.word_ids(word) or self.word_ids(f" {word}")
        if not ids:
            raise InvalidConfigError("initializer_token", f"{word!r} tokenizes to nothing")
        with torch.no_grad():
            weight = self.base.model.get_input_embeddings().weight
            self.input_vectors.copy_(weight[ids[0]].float().expand_as(self.input_vectors))
            if self.output_vectors is not None:
                head = self.base.model.get_output_embeddings().weight
                self.output_vectors.copy_(head[ids[0]].float().expand_as(self.output_vectors))

    def init_random(self, generator: torch.Generator) -> None:
        """Small random vectors with the embedding table's per-coordinate mean and spread."""
        pairs = [(self.input_vectors, self.base.model.get_input_embeddings().weight)]
        if self.output_vectors is not None:
            pairs.append((self.output_vectors, self.base.model.get_output_embeddings().weight))
        with torch.no_grad():
            for vectors, weight in pairs:
                weight = weight.float()
                noise = torch.randn(vectors.shape, generator=generator).to(vectors.device)
                vectors.copy_(weight.mean(0) + noise * weight.std(0))

    def vector_parameters(self) -> list[torch.nn.Parameter]:
        return [self.input_vectors] + ([self.output_vectors] if self.output_vectors is not None else [])

    # ---- LoRA ------------------------------------------------------------------------------
    def add_lora(self, *, rank: int, alpha: float, targets: str) -> None:
        """peft LoRA on the attention (and optionally MLP) projections; B starts at zero."""
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_target_modules(targets))
        try:
            inject_adapter_in_model(config, self.base.model, adapter_name=ADAPTER_NAME)
        except ValueError as error:  # none of the target names exists in this architecture
            raise InvalidConfigError("lora_targets", f"cannot apply LoRA to this model: {error}") from error
        self.lora = True
        for parameter in self.lora_parameters():
            parameter.data = parameter.data.float()
            parameter.requires_grad_(True)

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        if not self.lora:
            return []
        return [p for n, p in self.base.model.named_parameters() if "lora_" in n]

    def lora_state(self) -> dict[str, torch.Tensor] | None:
        """peft-format LoRA tensors ("model.layers.0.self_attn.q_proj.lora_A.weight" ...)."""
        if not self.lora:
            return None
        return get_peft_model_state_dict(self.base.model, adapter_name=ADAPTER_NAME)

    # ---- text ------------------------------------------------------------------------------
    def expand(self, text: str) -> str:
        """Write the concept as all of its vectors' tokens."""
        return text.replace(self.token, "".join(self.tokens)) if len(self.tokens) > 1 else text

    def close(self) -> None:
        """Remove hooks and LoRA layers: the shared base is left exactly as loaded."""
        self._placeholders.remove()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self.lora:
            recurse_remove_peft_layers(self.base.model)
            for attribute in ("peft_config", "_hf_peft_config_loaded"):
                self.base.model.__dict__.pop(attribute, None)  # instance state only; class defaults stay
        self.lora = False
        self.base.model.requires_grad_(False)
        self.base.model.eval()
