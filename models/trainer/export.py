"""Writing a trained concept in the formats diffusers, A1111 and ComfyUI load.

- learned_embeds.safetensors: {token: [num_vectors, width]} for diffusers' `load_textual_inversion`
- pytorch_lora_weights.safetensors: written by diffusers' own `save_lora_weights`, with the LoRA
  scale (alpha / rank) folded into lora_B, so every loader that assumes alpha = rank reads it right
- <name>.safetensors: the embedding as {"emb_params": vectors} (kohya's layout), which A1111's and
  ComfyUI's embedding loaders read; its file name is the prompt word there
- <name>_lora.safetensors: kohya/webui LoRA keys with per-module `.alpha` = the trained alpha and
  kohya/modelspec metadata, plus the embedding bundled as `bundle_emb.<token>.string_to_param.*`
  (A1111 >= 1.5 reads it; ComfyUI drops it and needs <name>.safetensors). A UNet with SD's layout
  (two layers per block) gets kohya's usual `lora_unet_down_blocks_...` names; any other layout
  (leap-tiny's one layer per block) gets the LDM names (`lora_unet_input_blocks_...`,
  `lora_unet_middle_block_...`, `lora_unet_output_blocks_...`), because A1111 converts diffusers
  names with SD's fixed block arithmetic and would land them on other modules, while both A1111
  (its `lora_unet` -> `diffusion_model` fallback) and ComfyUI (its LDM key map) read LDM names as is
- manifest.json: what produced the files, with their sha256
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from safetensors.torch import save

from models.trainer.config import Artifact

EMBEDDING_FILE = "learned_embeds.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"
MANIFEST_FILE = "manifest.json"
WEBUI_EMBEDDING_KEY = "emb_params"
SAI_MODEL_SPEC = "1.0.0"


def webui_embedding_file(name: str) -> str:
    """The A1111/ComfyUI embedding file; its stem is the word that calls it in a prompt."""
    return f"{name}.safetensors"


def webui_lora_file(name: str) -> str:
    """The kohya/webui LoRA file; its stem is what `<lora:...>` and ComfyUI's LoraLoader name."""
    return f"{name}_lora.safetensors"


@dataclass(frozen=True)
class BaseDescription:
    """What the webui metadata says about the base model."""

    name: str
    """The registry id or the folder's name, never a server path."""
    text_width: int
    prediction_type: str
    resolution: int
    layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
    """The UNet's layers per down block (diffusers' `layers_per_block`, one per block); SD 1.x/2.x: 2 each."""


def architecture(base: BaseDescription) -> tuple[str, str]:
    """(kohya ss_base_model_version, modelspec architecture) of an SD 1.x/2.x-layout model.

    SD 1.x has a 768-wide CLIP text encoder, SD 2.x a 1024-wide one. Any other width (leap-tiny)
    keeps SD 1.x's key layout, so kohya's version is sd_v1, while modelspec names the model itself
    so that no tool offers it for SD 1.5."""
    if base.text_width == 768:
        return "sd_v1", "stable-diffusion-v1"
    if base.text_width == 1024:
        v_768 = base.prediction_type == "v_prediction" and base.resolution >= 768
        return "sd_v2", "stable-diffusion-v2-768-v" if v_768 else "stable-diffusion-v2-512"
    return "sd_v1", base.name


def _number(value: float) -> str:
    return f"{value:g}"


def _modelspec(base: BaseDescription, *, name: str, token: str, adapter: str) -> dict[str, str]:
    return {
        "modelspec.sai_model_spec": SAI_MODEL_SPEC,
        "modelspec.architecture": f"{architecture(base)[1]}/{adapter}",
        "modelspec.implementation": "diffusers",
        "modelspec.title": name,
        "modelspec.resolution": f"{base.resolution}x{base.resolution}",
        "modelspec.prediction_type": "v" if base.prediction_type == "v_prediction" else "epsilon",
        "modelspec.trigger_phrase": token,
    }


def webui_lora_metadata(
    base: BaseDescription, *, name: str, token: str, rank: int, alpha: float, text_encoder: bool
) -> dict[str, str]:
    """The kohya (ss_*) and modelspec keys A1111 and ComfyUI use to show and classify a LoRA."""
    version, _ = architecture(base)
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": _number(alpha),
        "ss_base_model_version": version,
        "ss_v2": str(version == "sd_v2"),  # A1111 reads SD 2.x from this key
        "ss_sd_model_name": base.name,
        "ss_output_name": name,
        "ss_resolution": f"({base.resolution}, {base.resolution})",
        "ss_network_train_unet_only": str(not text_encoder),
        **_modelspec(base, name=name, token=token, adapter="lora"),
        "leap": json.dumps({"token": token, "network_dim": rank, "network_alpha": alpha}, sort_keys=True),
    }


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' own writer, with the header's keys sorted: it writes metadata in a random
    per-map order, which would make identical trainings hash differently."""
    data = save(tensors, metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to 8 bytes with spaces
    path.write_bytes(len(header).to_bytes(8, "little") + header + data[8 + size :])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact(path: Path, kind: str) -> Artifact:
    return Artifact(name=path.name, kind=kind, path=path, bytes=path.stat().st_size, sha256=sha256_file(path))


def _folded(lora: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """peft LoRA tensors with the scale multiplied into lora_B: B' A = scale * B A at scale 1."""
    return {k: v * scale if re.search(r"\.lora_B\b", k) else v for k, v in lora.items()}


SD_LAYERS_PER_BLOCK = 2
_UNET_ATTENTION = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.(.+)$")


def unet_layers_per_block(unet_config: Any) -> tuple[int, ...]:
    """diffusers' `layers_per_block` (one number for every block, or one per block) as one per down block."""
    layers = unet_config.layers_per_block
    count = len(unet_config.down_block_types)
    return tuple(int(value) for value in layers) if isinstance(layers, list | tuple) else (int(layers),) * count


def ldm_unet_module(name: str, layers_per_block: tuple[int, ...]) -> str:
    """The LDM (original Stable Diffusion) name of a diffusers UNet attention module, e.g.
    down_blocks.1.attentions.0.proj_in -> input_blocks.3.1.proj_in with one layer per block.

    LDM numbers the input blocks after conv_in (input_blocks.0): each down block's layers, then its
    downsampler; the output blocks run the up blocks in order, each with one layer more than its
    down block (up block x mirrors down block n-1-x). Within a block, .0 is the resnet and .1 the
    attention."""
    if name.startswith("mid_block.attentions.0."):
        return "middle_block.1." + name.removeprefix("mid_block.attentions.0.")
    match = _UNET_ATTENTION.match(name)
    if match is None:
        raise ValueError(f"{name} is not a UNet attention module")
    kind, block, layer, rest = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
    if kind == "down_blocks":
        index = 1 + sum(layers + 1 for layers in layers_per_block[:block]) + layer
        return f"input_blocks.{index}.1.{rest}"
    up_layers = [layers + 1 for layers in reversed(layers_per_block)]
    index = sum(up_layers[:block]) + layer
    return f"output_blocks.{index}.1.{rest}"


def _webui_unet_keys(unet_lora: dict[str, torch.Tensor], base: BaseDescription) -> dict[str, torch.Tensor]:
    """The UNet's peft LoRA tensors renamed to LDM module names where the layout is not SD's (see the
    module docstring); SD's layout keeps diffusers' names, which kohya's converter writes as usual."""
    if all(layers == SD_LAYERS_PER_BLOCK for layers in base.layers_per_block):
        return unet_lora
    renamed = {}
    for key, value in unet_lora.items():
        module, _, tensor = key.rpartition(".lora_")
        renamed[f"{ldm_unet_module(module, base.layers_per_block)}.lora_{tensor}"] = value
    return renamed


def save_concept(
    out_dir: Path,
    *,
    name: str,
    token: str,
    embedding: torch.Tensor,
    unet_lora: dict[str, torch.Tensor] | None,
    text_encoder_lora: dict[str, torch.Tensor] | None,
    lora_alpha: float,
    rank: int,
    base: BaseDescription,
) -> list[Artifact]:
    """Write the diffusers files and the A1111/ComfyUI files; return them as artifacts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    vectors = embedding.detach().float().cpu().contiguous()
    embeds = out_dir / EMBEDDING_FILE
    save_safetensors({token: vectors}, embeds)
    artifacts = [artifact(embeds, "embedding")]
    webui_embedding = out_dir / webui_embedding_file(name)
    save_safetensors(
        {WEBUI_EMBEDDING_KEY: vectors},
        webui_embedding,
        _modelspec(base, name=name, token=token, adapter="textual-inversion"),
    )
    artifacts.append(artifact(webui_embedding, "webui_embedding"))
    if unet_lora is None:
        return artifacts

    if text_encoder_lora:
        # transformers 5 flattened CLIPTextModel; the published layout (and every loader) keeps "text_model.".
        text_encoder_lora = {
            k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in text_encoder_lora.items()
        }
    scale = lora_alpha / rank
    unet_layers = convert_state_dict_to_diffusers(_folded(unet_lora, scale))
    te_layers = convert_state_dict_to_diffusers(_folded(text_encoder_lora, scale)) if text_encoder_lora else None
    StableDiffusionPipeline.save_lora_weights(
        out_dir, unet_lora_layers=unet_layers, text_encoder_lora_layers=te_layers, safe_serialization=True
    )
    artifacts.append(artifact(out_dir / LORA_FILE, "lora"))

    peft_keys = {f"unet.{k}": v for k, v in _webui_unet_keys(unet_lora, base).items()}
    peft_keys.update({f"text_encoder.{k}": v for k, v in (text_encoder_lora or {}).items()})
    # SD 1.x/2.x webui files name the one text encoder "lora_te_" (lora_te1_/te2_ are SDXL's).
    kohya = {k.replace("lora_te1_", "lora_te_", 1): v for k, v in convert_state_dict_to_kohya(peft_keys).items()}
    # diffusers' converter writes alpha = rank (scale 1); kohya loaders apply alpha / rank.
    for key in [k for k in kohya if k.endswith(".alpha")]:
        kohya[key] = torch.tensor(float(lora_alpha))
    webui: dict[str, torch.Tensor] = {f"bundle_emb.{token}.string_to_param.*": vectors}
    webui.update({k: v.detach().float().cpu().contiguous() for k, v in kohya.items()})
    metadata = webui_lora_metadata(
        base, name=name, token=token, rank=rank, alpha=lora_alpha, text_encoder=bool(text_encoder_lora)
    )
    webui_lora = out_dir / webui_lora_file(name)
    save_safetensors(webui, webui_lora, metadata)
    artifacts.append(artifact(webui_lora, "webui"))
    return artifacts


def write_manifest(out_dir: Path, manifest: dict[str, Any], artifacts: list[Artifact]) -> Artifact:
    manifest = {
        **manifest,
        "files": {a.name: {"kind": a.kind, "bytes": a.bytes, "sha256": a.sha256} for a in artifacts},
    }
    path = out_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return artifact(path, "manifest")


def loss_summary(losses: list[float]) -> dict[str, float | int]:
    """The manifest's `loss`: mean of the first and last tenth of the steps, the minimum, the count."""
    if not losses:
        return {}
    window = max(1, len(losses) // 10)
    return {
        "first": round(sum(losses[:window]) / window, 6),
        "last": round(sum(losses[-window:]) / window, 6),
        "min": round(min(losses), 6),
        "count": len(losses),
    }
