"""SDXL concepts: one new token trained in both text encoders, and the files SDXL tools load.

SDXL conditions its UNet on both encoders' penultimate hidden states side by side (CLIP ViT-L's
768 then OpenCLIP bigG's 1280 wide), on bigG's projected pooled output, and on the image's size and
crop ("time ids"). A concept's token therefore has one row per vector in each encoder: the job keeps
them as one parameter [num_vectors, 768 + 1280] (the guard, snapshots, stopping and the booster
treat it like SD's single row), and each encoder's hook reads its own slice.

Files (what diffusers' advanced SDXL trainer, kohya's sd-scripts and the webuis use):
- learned_embeds.safetensors and <name>.safetensors: {"clip_l": [n, 768], "clip_g": [n, 1280]},
  which diffusers loads with `load_textual_inversion` once per encoder and A1111/ComfyUI read as an
  SDXL embedding (the file's stem is the prompt word there)
- pytorch_lora_weights.safetensors: diffusers' StableDiffusionXLPipeline.save_lora_weights (scale
  folded into lora_B, as for SD)
- <name>_lora.safetensors: kohya's SDXL LoRA: `lora_unet_` + the UNet's LDM module names (what
  sd-scripts writes for SDXL and ComfyUI maps), `lora_te1_` / `lora_te2_` for the two encoders, a
  per-module `.alpha`, the embedding bundled as `bundle_emb.<token>.clip_l/clip_g` (A1111), and
  kohya/modelspec metadata naming SDXL
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

from models.enums import Family
from models.trainer.base_model import BaseComponents
from models.trainer.concept import ADAPTER_NAME, TEXT_ENCODER_LORA_TARGETS, ConceptModel, InitialState
from models.trainer.config import Artifact
from models.trainer.errors import InvalidConfigError
from models.trainer.export import (
    EMBEDDING_FILE,
    LORA_FILE,
    SAI_MODEL_SPEC,
    _folded,
    artifact,
    ldm_unet_module,
    save_safetensors,
    unet_layers_per_block,
    webui_embedding_file,
    webui_lora_file,
)
from models.trainer.placeholders import PlaceholderHooks

SDXL_KOHYA_VERSION = "sdxl_base_v1-0"
SDXL_ARCHITECTURE = "stable-diffusion-xl-v1-base"
TEXT_ENCODER_2_PREFIX = "text_encoder_2."
"""Keys of the second encoder's LoRA in a job's `text_encoder_lora` tensors (the first's have none)."""
EMBEDDING_KEYS = ("clip_l", "clip_g")


def concept_model(base: BaseComponents, *, token: str, num_vectors: int) -> ConceptModel:
    """The job's concept for this base model's family."""
    if base.family == Family.SDXL:
        return SDXLConcept(base, token=token, num_vectors=num_vectors)
    return ConceptModel(base, token=token, num_vectors=num_vectors)


def time_ids(size: tuple[int, int], batch: int, device: torch.device) -> torch.Tensor:
    """SDXL's micro-conditioning: original size, crop top-left, target size. Training images are
    centre-cropped and resized to the target, so they read as uncropped images of that size, which
    is also what the pipeline passes by default."""
    height, width = size
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=device).repeat(batch, 1)


def encode(base: BaseComponents, ids: torch.Tensor, ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states [batch, seq, 768 + 1280], pooled [batch, 1280]) as StableDiffusionXLPipeline.encode_prompt
    computes them: both encoders' penultimate layers side by side, bigG's projected pooled output."""
    assert base.text_encoder_2 is not None
    first = base.text_encoder(ids, output_hidden_states=True)
    second = base.text_encoder_2(ids_2, output_hidden_states=True)
    hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2].to(first.hidden_states[-2])], dim=-1)
    return hidden, second.text_embeds


def split_text_encoder_lora(
    tensors: dict[str, torch.Tensor] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A job's text-encoder LoRA tensors as (first encoder's, second encoder's), prefixes removed."""
    first, second = {}, {}
    for key, value in (tensors or {}).items():
        if key.startswith(TEXT_ENCODER_2_PREFIX):
            second[key.removeprefix(TEXT_ENCODER_2_PREFIX)] = value
        else:
            first[key] = value
    return first, second


class SDXLConcept(ConceptModel):
    """The token in both tokenizers and encoders (+ optional LoRA on the UNet and both encoders)."""

    def __init__(self, base: BaseComponents, *, token: str, num_vectors: int) -> None:
        assert base.tokenizer_2 is not None and base.text_encoder_2 is not None
        self.width_1 = base.text_widths[0]
        super().__init__(base, token=token, num_vectors=num_vectors)
        self.text_encoder_2_lora = False
        self._cached: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cached_version = -1
        try:
            self.tokenizer_2 = copy.deepcopy(base.tokenizer_2)
            if any(t in self.tokenizer_2.get_vocab() for t in self.tokens):
                raise InvalidConfigError("token", f"{token!r} is already a word of the base model's vocabulary")
            self.base_vocab_size_2 = len(self.tokenizer_2)
            self.tokenizer_2.add_tokens(self.tokens)
            self.token_ids_2 = self.tokenizer_2.convert_tokens_to_ids(self.tokens)
            if any(i < self.base_vocab_size_2 for i in self.token_ids_2):
                raise InvalidConfigError("token", f"{token!r} does not become a new single token")
        except InvalidConfigError:
            self._placeholders.remove()
            raise
        self._placeholders_2 = PlaceholderHooks(
            base.text_encoder_2.get_input_embeddings(),
            is_placeholder=lambda ids: ids >= self.base_vocab_size_2,
            vectors=self._vectors_2,
        )

    @property
    def text_encoder_2(self) -> Any:  # CLIPTextModelWithProjection
        assert self.base.text_encoder_2 is not None
        return self.base.text_encoder_2

    def embeddings(self) -> dict[str, torch.Tensor]:
        """The token's vectors per encoder, as SDXL embedding files name them (clip_l, clip_g)."""
        vectors = self.embedding.detach().float().cpu()
        return {"clip_l": vectors[:, : self.width_1].contiguous(), "clip_g": vectors[:, self.width_1 :].contiguous()}

    def _vectors(self, ids: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        rows = self.embedding[:, : self.width_1].to(output.dtype)
        return rows[(ids - self.base_vocab_size).clamp(min=0)]

    def _vectors_2(self, ids: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        rows = self.embedding[:, self.width_1 :].to(output.dtype)
        return rows[(ids - self.base_vocab_size_2).clamp(min=0)]

    # ---- initialisation -------------------------------------------------------------------
    def init_from_token(self, initializer: str) -> None:
        rows = []
        for tokenizer, encoder in (
            (self.base.tokenizer, self.base.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            ids = tokenizer(initializer, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise InvalidConfigError("initializer_token", f"{initializer!r} must be a single token")
            rows.append(encoder.get_input_embeddings().weight[ids[0]].float())
        with torch.no_grad():
            self.embedding.copy_(torch.cat(rows).expand_as(self.embedding))

    def init_random(self, generator: torch.Generator) -> None:
        weights = [encoder.get_input_embeddings().weight.float().cpu() for encoder in self.base.text_encoders]
        mean = torch.cat([weight.mean(0) for weight in weights])
        std = torch.cat([weight.std(0) for weight in weights])
        noise = torch.randn(self.embedding.shape, generator=generator)
        with torch.no_grad():
            self.embedding.copy_(mean + noise * std)

    def init_from_state(self, state: InitialState) -> None:
        first, second = split_text_encoder_lora(state.text_encoder_lora)
        super().init_from_state(replace(state, text_encoder_lora=first or None))
        if second and self.text_encoder_2_lora:
            self._load_lora(self.text_encoder_2, second)

    # ---- LoRA ------------------------------------------------------------------------------
    def add_lora(self, *, rank: int, alpha: float, text_encoder: bool) -> None:
        super().add_lora(rank=rank, alpha=alpha, text_encoder=text_encoder)
        if text_encoder:
            config = LoraConfig(
                r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TEXT_ENCODER_LORA_TARGETS
            )
            inject_adapter_in_model(config, self.text_encoder_2, adapter_name=ADAPTER_NAME)
            self.text_encoder_2_lora = True
            for name, parameter in self.text_encoder_2.named_parameters():
                if "lora_" in name:
                    parameter.data = parameter.data.float()

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        parameters = super().lora_parameters()
        if self.text_encoder_2_lora:
            parameters += [p for n, p in self.text_encoder_2.named_parameters() if "lora_" in n]
        return parameters

    def lora_state(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
        unet, first = super().lora_state()
        if not self.text_encoder_2_lora:
            return unet, first
        second = get_peft_model_state_dict(self.text_encoder_2, adapter_name=ADAPTER_NAME)
        return unet, {**(first or {}), **{f"{TEXT_ENCODER_2_PREFIX}{k}": v for k, v in second.items()}}

    # ---- use -------------------------------------------------------------------------------
    def _ids(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        return tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.base.device)

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.embedding.requires_grad or self.text_encoder_lora or self.text_encoder_2_lora:
            return self._encode_now(prompts)
        # Nothing in the text path trains (LoRA on the UNet alone): each prompt's conditioning is
        # computed once, until the token's vectors are set again (their version changes).
        if self.embedding._version != self._cached_version:
            self._cached, self._cached_version = {}, self.embedding._version
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._cached]
        if missing:
            with torch.no_grad():
                hidden, pooled = self._encode_now(missing)
            self._cached.update({prompt: (hidden[i], pooled[i]) for i, prompt in enumerate(missing)})
        rows = [self._cached[prompt] for prompt in prompts]
        return torch.stack([hidden for hidden, _ in rows]), torch.stack([pooled for _, pooled in rows])

    def _encode_now(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode(self.base, self._ids(self.tokenizer, prompts), self._ids(self.tokenizer_2, prompts))

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self._encode(prompts)[0]

    def conditioning(self, prompts: list[str], size: tuple[int, int]) -> tuple[torch.Tensor, dict | None]:
        hidden, pooled = self._encode(prompts)
        return hidden, {"text_embeds": pooled, "time_ids": time_ids(size, len(prompts), self.base.device)}

    def close(self) -> None:
        self._placeholders_2.remove()
        if self.text_encoder_2_lora:
            _remove_lora(self.text_encoder_2)
            self.text_encoder_2_lora = False
        self.text_encoder_2.requires_grad_(False)
        self.text_encoder_2.eval()
        super().close()


def _remove_lora(module: torch.nn.Module) -> None:
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    recurse_remove_peft_layers(module)
    if hasattr(module, "peft_config"):
        del module.peft_config


# ---- files ---------------------------------------------------------------------------------
def modelspec(*, name: str, token: str, adapter: str, resolution: int, prediction_type: str) -> dict[str, str]:
    """modelspec keys naming SDXL (what A1111/ComfyUI/civitai classify a file by)."""
    return {
        "modelspec.sai_model_spec": SAI_MODEL_SPEC,
        "modelspec.architecture": f"{SDXL_ARCHITECTURE}/{adapter}",
        "modelspec.implementation": "diffusers",
        "modelspec.title": name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        "modelspec.trigger_phrase": token,
    }


def webui_lora_metadata(
    *,
    base_name: str,
    name: str,
    token: str,
    rank: int,
    alpha: float,
    text_encoder: bool,
    resolution: int,
    prediction_type: str,
) -> dict[str, str]:
    """kohya's ss_* keys as sd-scripts writes them for SDXL, and modelspec's."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": f"{alpha:g}",
        "ss_base_model_version": SDXL_KOHYA_VERSION,
        "ss_v2": "False",
        "ss_sd_model_name": base_name,
        "ss_output_name": name,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_network_train_unet_only": str(not text_encoder),
        **modelspec(name=name, token=token, adapter="lora", resolution=resolution, prediction_type=prediction_type),
        "leap": json.dumps({"token": token, "network_dim": rank, "network_alpha": alpha}, sort_keys=True),
    }


def kohya_keys(
    unet_lora: dict[str, torch.Tensor],
    text_encoder_lora: dict[str, torch.Tensor] | None,
    *,
    layers: tuple[int, ...],
    alpha: float,
) -> dict[str, torch.Tensor]:
    """peft tensors -> kohya SDXL keys: lora_unet_<LDM module>, lora_te1_/lora_te2_<module>, .alpha."""
    peft_keys = {}
    for key, value in unet_lora.items():
        module, _, tensor = key.rpartition(".lora_")
        peft_keys[f"unet.{ldm_unet_module(module, layers)}.lora_{tensor}"] = value
    first, second = split_text_encoder_lora(text_encoder_lora)
    peft_keys.update({f"text_encoder.{k}": v for k, v in _text_model_keys(first).items()})
    peft_keys.update({f"text_encoder_2.{k}": v for k, v in _text_model_keys(second).items()})
    kohya = convert_state_dict_to_kohya(peft_keys)
    # diffusers' converter writes alpha = rank (scale 1); kohya loaders apply alpha / rank.
    return {k: torch.tensor(float(alpha)) if k.endswith(".alpha") else v for k, v in kohya.items()}


def _text_model_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers 5 flattened the CLIP text models; the published layout (and every loader) keeps "text_model.".
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in tensors.items()}


def save_sdxl_concept(
    out_dir: Path,
    concept: SDXLConcept,
    *,
    name: str,
    base_name: str,
    lora_alpha: float,
    rank: int,
    resolution: int,
) -> list[Artifact]:
    """Write the diffusers and A1111/ComfyUI files of an SDXL concept; return them as artifacts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = concept.base
    token = concept.token
    prediction_type = base.noise_scheduler.config.prediction_type
    embeddings = concept.embeddings()
    embeds = out_dir / EMBEDDING_FILE
    save_safetensors(embeddings, embeds)
    artifacts = [artifact(embeds, "embedding")]
    webui_embedding = out_dir / webui_embedding_file(name)
    spec = modelspec(
        name=name, token=token, adapter="textual-inversion", resolution=resolution, prediction_type=prediction_type
    )
    save_safetensors(embeddings, webui_embedding, spec)
    artifacts.append(artifact(webui_embedding, "webui_embedding"))
    unet_lora, text_encoder_lora = concept.lora_state()
    if unet_lora is None:
        return artifacts

    scale = lora_alpha / rank
    first, second = split_text_encoder_lora(text_encoder_lora)
    StableDiffusionXLPipeline.save_lora_weights(
        out_dir,
        unet_lora_layers=convert_state_dict_to_diffusers(_folded(unet_lora, scale)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(_folded(_text_model_keys(first), scale))
        if first
        else None,
        text_encoder_2_lora_layers=convert_state_dict_to_diffusers(_folded(_text_model_keys(second), scale))
        if second
        else None,
        safe_serialization=True,
    )
    artifacts.append(artifact(out_dir / LORA_FILE, "lora"))

    webui = {f"bundle_emb.{token}.{key}": value for key, value in embeddings.items()}
    kohya = kohya_keys(unet_lora, text_encoder_lora, layers=unet_layers_per_block(base.unet.config), alpha=lora_alpha)
    webui.update({k: v.detach().float().cpu().contiguous() for k, v in kohya.items()})
    metadata = webui_lora_metadata(
        base_name=base_name,
        name=name,
        token=token,
        rank=rank,
        alpha=lora_alpha,
        text_encoder=bool(text_encoder_lora),
        resolution=resolution,
        prediction_type=prediction_type,
    )
    webui_lora = out_dir / webui_lora_file(name)
    save_safetensors(webui, webui_lora, metadata)
    artifacts.append(artifact(webui_lora, "webui"))
    return artifacts
