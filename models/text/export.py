"""Writing a trained text concept in the layouts peft, vLLM and plain safetensors readers load.

out_dir/
  adapter/                      peft adapter: `AutoPeftModelForCausalLM.from_pretrained("adapter")` (its
                                base_model_name_or_path is the hub id; LEAP's registry id is in the
                                weights' `leap` metadata), or `PeftModel.from_pretrained(resized_base, "adapter")`
    adapter_config.json         LoRA with `trainable_token_indices` (lora, pivotal) or TRAINABLE_TOKENS (token)
    adapter_model.safetensors   LoRA tensors + only the new token rows (trainable_tokens_delta), a few KB
    tokenizer files             the base tokenizer with the concept token(s) added
  lora-vllm/                    LoRA only (no embedding layers), as vLLM's LoRA loader reads it (lora, pivotal);
                                vLLM cannot add the token, so the manifest's `vllm` says what it carries
  token_embeddings.safetensors  {token: [1, width]} per vector (+ "<token>.output" rows when untied)
  manifest.json                 what produced the files, with their sha256

The peft key names come from peft itself, by building the same adapter on a meta-device copy
of the architecture, so they match whatever peft expects for that model.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, TaskType, TrainableTokensConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file

from models.text.concept import TextConcept
from models.trainer.config import Artifact
from models.trainer.export import (  # noqa: F401  (manifest shared with the image side)
    artifact,
    save_safetensors,
    write_manifest,
)

ADAPTER_DIR = "adapter"
VLLM_DIR = "lora-vllm"
TOKENS_FILE = "token_embeddings.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _peft_keys(base_config, peft_config) -> dict[str, tuple[int, ...]]:
    """The adapter's state-dict keys and shapes, as peft writes them for this architecture."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(base_config)
        peft_model = get_peft_model(skeleton, copy.deepcopy(peft_config))
    # save_embedding_layers=False: only the new rows, never the whole (resized) embedding matrix.
    state = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    return {key: tuple(value.shape) for key, value in state.items()}


def _tensor_for(
    key: str, concept: TextConcept, lora: dict[str, torch.Tensor], embed_name: str, head_name: str | None
) -> torch.Tensor:
    if "trainable_tokens_delta" in key:
        module = key.removeprefix("base_model.model.").split(".token_adapter.")[0]
        module = module.removesuffix(".trainable_tokens_delta")
        if module == embed_name:
            return concept.input_vectors
        if module == head_name:
            return concept.output_rows
        raise KeyError(key)
    return lora[key.removeprefix("base_model.model.")]


def _write_adapter(
    folder: Path,
    peft_config,
    concept: TextConcept,
    lora: dict[str, torch.Tensor],
    base: BaseNames,
    embed_name: str,
    head_name: str | None,
) -> list[Path]:
    base_config = concept.base.model.config
    sized = type(base_config).from_dict(base_config.to_dict())
    sized.vocab_size = max(concept.num_embeddings, concept.token_ids[-1] + 1)
    expected = _peft_keys(sized, peft_config)
    tensors = {}
    for key, shape in expected.items():
        value = _tensor_for(key, concept, lora, embed_name, head_name).detach().float().cpu().clone()
        if tuple(value.shape) != shape:
            raise RuntimeError(f"adapter tensor {key} has shape {tuple(value.shape)}, peft expects {shape}")
        tensors[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    # The hub id, so AutoPeftModelForCausalLM finds the base; LEAP's registry id stays in LEAP's metadata.
    peft_config.base_model_name_or_path = base.hub_id
    peft_config.task_type = TaskType.CAUSAL_LM
    peft_config.inference_mode = True
    peft_config.save_pretrained(str(folder))
    leap = json.dumps({"base_model": base.registry_id}, sort_keys=True)
    save_safetensors(tensors, folder / ADAPTER_WEIGHTS, {"format": "pt", "leap": leap})  # sorted: reproducible
    return [folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS]


@dataclass(frozen=True)
class BaseNames:
    """The two names of a text base model in the files: the hub id (peft's base_model_name_or_path)
    and LEAP's registry id (LEAP's own metadata)."""

    hub_id: str
    registry_id: str


def save_text_concept(
    out_dir: Path, concept: TextConcept, *, base: BaseNames, rank: int, alpha: float, target_modules: list[str]
) -> list[Artifact]:
    """Write the peft adapter (+ tokenizer), the vLLM LoRA folder and the token vectors."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = concept.base.model
    embed_name = _module_name(model, model.get_input_embeddings())
    head = model.get_output_embeddings()
    head_name = _module_name(model, head) if head is not None else None
    lora = {k: v for k, v in (concept.lora_state() or {}).items()}
    ids = list(concept.token_ids)
    # Untied heads have their own rows for the new token(s); tied ones follow the embedding in peft.
    indices: dict[str, list[int]] = {embed_name: ids}
    if not concept.tied and head_name is not None:
        indices[head_name] = ids
    if concept.lora:
        peft_config = LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules, trainable_token_indices=indices
        )
    else:
        peft_config = TrainableTokensConfig(target_modules=list(indices), token_indices=ids)
    paths = _write_adapter(out_dir / ADAPTER_DIR, peft_config, concept, lora, base, embed_name, head_name)
    kinds = {p: "adapter" for p in paths}
    tokenizer_files = concept.tokenizer.save_pretrained(str(out_dir / ADAPTER_DIR))
    for name in tokenizer_files:
        if Path(name).is_file():
            kinds[Path(name)] = "tokenizer"
    if concept.lora:
        vllm_config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules)
        for path in _write_adapter(out_dir / VLLM_DIR, vllm_config, concept, lora, base, embed_name, head_name):
            kinds[path] = "lora"
    vectors = {
        token: concept.input_vectors[i : i + 1].detach().float().cpu().contiguous()
        for i, token in enumerate(concept.tokens)
    }
    if concept.output_vectors is not None:
        vectors.update(
            {
                f"{token}.output": concept.output_vectors[i : i + 1].detach().float().cpu().contiguous()
                for i, token in enumerate(concept.tokens)
            }
        )
    save_file(vectors, str(out_dir / TOKENS_FILE), metadata={"leap": json.dumps({"tied": concept.tied})})
    kinds[out_dir / TOKENS_FILE] = "embedding"
    return [_artifact(out_dir, path, kind) for path, kind in sorted(kinds.items())]


def _artifact(out_dir: Path, path: Path, kind: str) -> Artifact:
    """An artifact named by its path under out_dir ("adapter/adapter_config.json")."""
    found = artifact(path, kind)
    return Artifact(
        name=path.relative_to(out_dir).as_posix(), kind=kind, path=path, bytes=found.bytes, sha256=found.sha256
    )
