"""Writing a trained concept in the formats diffusers, A1111 and ComfyUI load.

- learned_embeds.safetensors: {token: [num_vectors, width]} for `load_textual_inversion`
- pytorch_lora_weights.safetensors: written by diffusers' own `save_lora_weights`
- <name>.safetensors: kohya/webui LoRA keys with the embedding bundled as
  `bundle_emb.<token>.string_to_param.*` (A1111 >= 1.5 and ComfyUI read bundled embeddings)
- manifest.json: what produced the files, with their sha256
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from safetensors.torch import save_file

from models.trainer.config import Artifact

EMBEDDING_FILE = "learned_embeds.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"
WEBUI_FILE = "leap_webui.safetensors"
MANIFEST_FILE = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact(path: Path, kind: str) -> Artifact:
    return Artifact(name=path.name, kind=kind, path=path, bytes=path.stat().st_size, sha256=sha256_file(path))


def save_concept(
    out_dir: Path,
    *,
    token: str,
    embedding: torch.Tensor,
    unet_lora: dict[str, torch.Tensor] | None,
    text_encoder_lora: dict[str, torch.Tensor] | None,
    lora_alpha: float | None,
    rank: int,
) -> list[Artifact]:
    """Write embedding, LoRA and the combined webui file; return them as artifacts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    vectors = embedding.detach().float().cpu().contiguous()
    save_file({token: vectors}, str(out_dir / EMBEDDING_FILE))
    artifacts = [artifact(out_dir / EMBEDDING_FILE, "embedding")]

    webui: dict[str, torch.Tensor] = {f"bundle_emb.{token}.string_to_param.*": vectors}
    if text_encoder_lora:
        # transformers 5 flattened CLIPTextModel; the published layout (and every loader) keeps "text_model.".
        text_encoder_lora = {k if k.startswith("text_model.") else f"text_model.{k}": v
                             for k, v in text_encoder_lora.items()}
    if unet_lora is not None:
        unet_layers = convert_state_dict_to_diffusers(unet_lora)
        te_layers = convert_state_dict_to_diffusers(text_encoder_lora) if text_encoder_lora else None
        StableDiffusionPipeline.save_lora_weights(
            out_dir, unet_lora_layers=unet_layers, text_encoder_lora_layers=te_layers, safe_serialization=True)
        artifacts.append(artifact(out_dir / LORA_FILE, "lora"))
        peft_keys = {f"unet.{k}": v for k, v in unet_lora.items()}
        peft_keys.update({f"text_encoder.{k}": v for k, v in (text_encoder_lora or {}).items()})
        # SD 1.x/2.x webui files name the one text encoder "lora_te_" (lora_te1_/te2_ are SDXL's).
        kohya = {k.replace("lora_te1_", "lora_te_", 1): v for k, v in convert_state_dict_to_kohya(peft_keys).items()}
        # kohya stores alpha per module; diffusers' converter leaves it implied by rank.
        alpha = torch.tensor(float(lora_alpha if lora_alpha is not None else rank))
        for key in [k for k in kohya if k.endswith(".lora_down.weight")]:
            kohya.setdefault(key.replace(".lora_down.weight", ".alpha"), alpha)
        webui.update({k: v.detach().float().cpu().contiguous() for k, v in kohya.items()})
    # One metadata key: safetensors writes several in a per-process random order, which would
    # make identical trainings hash differently.
    details = {"token": token, "network_dim": rank, "network_alpha": lora_alpha if lora_alpha else rank}
    save_file(webui, str(out_dir / WEBUI_FILE), metadata={"leap": json.dumps(details, sort_keys=True)})
    artifacts.append(artifact(out_dir / WEBUI_FILE, "webui"))
    return artifacts


def write_manifest(out_dir: Path, manifest: dict[str, Any], artifacts: list[Artifact]) -> Artifact:
    manifest = {**manifest, "files": {a.name: {"kind": a.kind, "bytes": a.bytes, "sha256": a.sha256}
                                       for a in artifacts}}
    path = out_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return artifact(path, "manifest")
