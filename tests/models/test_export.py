"""The exported files in other tools' terms: the trained LoRA scale, the embedding file A1111 and
ComfyUI read, file names and the kohya/modelspec metadata, and no server path in the manifest."""

import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import load_file

from models.booster.resolver import registered_booster
from models.registry import load_registry
from models.trainer.concept import ADAPTER_NAME
from models.trainer.config import TrainConfig
from models.trainer.errors import BaseModelError
from models.trainer.train import Job, train

REGISTRY = load_registry()

RANK, ALPHA = 2, 8.0  # scale 4: a file read at scale 1 is far off


def kohya_name(module_name: str, prefix: str) -> str:
    """The kohya/webui module key of a diffusers or transformers module name."""
    if prefix == "lora_te" and not module_name.startswith("text_model."):
        module_name = f"text_model.{module_name}"  # transformers 5 flattened CLIPTextModel
    return f"{prefix}_{module_name.replace('.', '_')}"


def trained_deltas(job: Job) -> dict[str, torch.Tensor]:
    """Each LoRA module's weight delta as the training applied it (peft: scale * B @ A)."""
    deltas = {}
    for prefix, model in (("lora_unet", job.base.unet), ("lora_te", job.base.text_encoder)):
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
                deltas[kohya_name(name, prefix)] = module.get_delta_weight(ADAPTER_NAME).detach().clone()
    return deltas


def prediction(pipeline_or_job, prompt: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([300, 700])
    with torch.no_grad():
        if isinstance(pipeline_or_job, Job):
            hidden = pipeline_or_job.concept.encode_prompts([prompt] * 2)
            return pipeline_or_job.base.unet(latents, timesteps, hidden).sample.clone()
        pipeline = pipeline_or_job
        ids = pipeline.tokenizer(
            [prompt] * 2, padding="max_length", max_length=pipeline.tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
        return pipeline.unet(latents, timesteps, pipeline.text_encoder(ids)[0]).sample


@pytest.fixture(scope="module")
def scaled_run(leap_tiny, concept_images, tmp_path_factory):
    """A LoRA training at alpha != rank (UNet and text encoder), with what it computed at the end."""
    out = tmp_path_factory.mktemp("scaled")
    seen: dict[str, object] = {}

    def capture(step: int, job: Job) -> None:
        seen["prediction"] = prediction(job, "a photo of a <leap>")
        seen["deltas"] = trained_deltas(job)

    config = TrainConfig(
        base_model=leap_tiny,
        mode="lora",
        init="token",
        steps=3,
        batch_size=2,
        seed=2,
        lora_lr=5e-2,
        lora_rank=RANK,
        lora_alpha=ALPHA,
        train_text_encoder_lora=True,
    )
    result = train(config, concept_images, out, registry=REGISTRY, eval_steps=(3,), eval_hook=capture)
    return out, result, seen


def webui_lora_path(result) -> Path:
    return next(a.path for a in result.artifacts if a.kind == "webui")


def test_diffusers_file_loads_at_the_trained_scale(leap_tiny, scaled_run):
    """Text-encoder LoRA included (train_text_encoder): the loaded pipeline predicts what training did."""
    out, _, seen = scaled_run
    assert any(key.startswith("text_encoder.") for key in load_file(str(out / "pytorch_lora_weights.safetensors")))
    pipeline = StableDiffusionPipeline.from_pretrained(leap_tiny)
    pipeline.load_textual_inversion(str(out / "learned_embeds.safetensors"))
    pipeline.load_lora_weights(str(out))
    torch.testing.assert_close(prediction(pipeline, "a photo of a <leap>"), seen["prediction"], atol=2e-5, rtol=1e-4)


def test_webui_file_gives_the_trained_deltas_by_the_kohya_convention(leap_tiny, scaled_run):
    """A1111 and ComfyUI both apply alpha / rank (rank = lora_down's rows) to up @ down; the UNet's
    keys are read through ComfyUI's map (they are LDM names for leap-tiny's layout)."""
    _, result, seen = scaled_run
    tensors = load_file(str(webui_lora_path(result)))
    comfy = comfyui_unet_key_map(leap_tiny_ldm_config(leap_tiny))
    ldm_to_diffusers = {
        ldm: diffusers for diffusers, ldm in comfy_unet_to_diffusers(leap_tiny_ldm_config(leap_tiny)).items()
    }

    def trained_name(key: str) -> str:
        if not key.startswith("lora_unet_"):
            return key
        diffusers = ldm_to_diffusers[comfy[key].removeprefix("diffusion_model.")].removesuffix(".weight")
        return kohya_name(diffusers, "lora_unet")

    deltas = seen["deltas"]
    written = {k.split(".")[0]: trained_name(k.split(".")[0]) for k in tensors if k.endswith(".lora_down.weight")}
    assert deltas and set(written.values()) == set(deltas)
    for module, name in written.items():
        expected = deltas[name]
        down, up = tensors[f"{module}.lora_down.weight"], tensors[f"{module}.lora_up.weight"]
        alpha = float(tensors[f"{module}.alpha"])
        assert alpha == ALPHA and down.shape[0] == RANK
        torch.testing.assert_close(alpha / down.shape[0] * (up @ down), expected, atol=1e-6, rtol=1e-5)


# How the two webuis find the module a kohya key patches, re-implemented from reading their code:
# ComfyUI's comfy/utils.py unet_to_diffusers (the LDM name of each diffusers UNet weight for a UNet
# config) and comfy/lora.py model_lora_keys_unet (lora_unet_<LDM or diffusers name, "." -> "_">);
# A1111's extensions-builtin/Lora/networks.py load_network: convert_diffusers_name_to_compvis (SD's
# fixed block arithmetic), then the model's module names ("." -> "_"), then "lora_unet" ->
# "diffusion_model" for keys that are LDM names already.
ATTENTION_WEIGHTS = ("proj_in.weight", "proj_out.weight", "norm.weight")
TRANSFORMER_WEIGHTS = tuple(
    f"{attention}.{projection}.weight"
    for attention in ("attn1", "attn2")
    for projection in ("to_q", "to_k", "to_v", "to_out.0")
) + ("ff.net.0.proj.weight", "ff.net.2.weight", "norm1.weight", "norm2.weight", "norm3.weight")
RESNET_WEIGHTS = {"in_layers.2": "conv1", "out_layers.3": "conv2", "emb_layers.1": "time_emb_proj"}


def leap_tiny_ldm_config(leap_tiny: str) -> dict:
    """The UNet config ComfyUI would detect for leap-tiny in LDM form (per-layer transformer depths)."""
    unet = json.loads((Path(leap_tiny) / "unet" / "config.json").read_text())
    blocks = len(unet["down_block_types"])
    layers = unet["layers_per_block"]
    down = [1 if kind.startswith("CrossAttn") else 0 for kind in unet["down_block_types"] for _ in range(layers)]
    up = [1 if kind.startswith("CrossAttn") else 0 for kind in unet["up_block_types"] for _ in range(layers + 1)]
    return {
        "num_res_blocks": [layers] * blocks,
        "channel_mult": list(range(1, blocks + 1)),
        "transformer_depth": down,
        "transformer_depth_output": list(reversed(up)),  # ComfyUI pops it from the end, up_blocks.0 first
        "transformer_depth_middle": 1,
    }


def comfy_unet_to_diffusers(config: dict) -> dict[str, str]:
    """diffusers UNet weight -> LDM weight, as ComfyUI's unet_to_diffusers numbers the blocks."""
    num_res_blocks, blocks = config["num_res_blocks"], len(config["channel_mult"])
    depth, depth_out = list(config["transformer_depth"]), list(config["transformer_depth_output"])
    mapping: dict[str, str] = {}
    for x in range(blocks):
        n = 1 + (num_res_blocks[x] + 1) * x
        for i in range(num_res_blocks[x]):
            for ldm, diffusers in RESNET_WEIGHTS.items():
                mapping[f"down_blocks.{x}.resnets.{i}.{diffusers}.weight"] = f"input_blocks.{n}.0.{ldm}.weight"
            if depth.pop(0) > 0:
                for name in ATTENTION_WEIGHTS:
                    mapping[f"down_blocks.{x}.attentions.{i}.{name}"] = f"input_blocks.{n}.1.{name}"
                for name in TRANSFORMER_WEIGHTS:
                    mapping[f"down_blocks.{x}.attentions.{i}.transformer_blocks.0.{name}"] = (
                        f"input_blocks.{n}.1.transformer_blocks.0.{name}"
                    )
            n += 1
        mapping[f"down_blocks.{x}.downsamplers.0.conv.weight"] = f"input_blocks.{n}.0.op.weight"
    for name in ATTENTION_WEIGHTS:
        mapping[f"mid_block.attentions.0.{name}"] = f"middle_block.1.{name}"
    for t in range(config["transformer_depth_middle"]):
        for name in TRANSFORMER_WEIGHTS:
            mapping[f"mid_block.attentions.0.transformer_blocks.{t}.{name}"] = (
                f"middle_block.1.transformer_blocks.{t}.{name}"
            )
    reversed_blocks = list(reversed(num_res_blocks))
    for x in range(blocks):
        n = (reversed_blocks[x] + 1) * x
        for i in range(reversed_blocks[x] + 1):
            for ldm, diffusers in RESNET_WEIGHTS.items():
                mapping[f"up_blocks.{x}.resnets.{i}.{diffusers}.weight"] = f"output_blocks.{n}.0.{ldm}.weight"
            if depth_out.pop() > 0:
                for name in ATTENTION_WEIGHTS:
                    mapping[f"up_blocks.{x}.attentions.{i}.{name}"] = f"output_blocks.{n}.1.{name}"
                for name in TRANSFORMER_WEIGHTS:
                    mapping[f"up_blocks.{x}.attentions.{i}.transformer_blocks.0.{name}"] = (
                        f"output_blocks.{n}.1.transformer_blocks.0.{name}"
                    )
            n += 1
    return mapping


def comfyui_unet_key_map(config: dict) -> dict[str, str]:
    """ComfyUI's model_lora_keys_unet: kohya module key -> the model weight it patches."""
    key_map = {}
    diffusers_to_ldm = comfy_unet_to_diffusers(config)
    for ldm in diffusers_to_ldm.values():  # the LDM model's own state-dict keys
        key_map["lora_unet_" + ldm.removesuffix(".weight").replace(".", "_")] = f"diffusion_model.{ldm}"
    for diffusers, ldm in diffusers_to_ldm.items():
        key_map["lora_unet_" + diffusers.removesuffix(".weight").replace(".", "_")] = f"diffusion_model.{ldm}"
    return key_map


def a1111_convert_diffusers_name_to_compvis(key: str) -> str:
    """The UNet part of A1111's convert_diffusers_name_to_compvis (SD 1.x's three layers per block)."""
    suffixes = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1"}
    if match := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        rest = suffixes.get(rest, rest) if kind == "resnets" else rest
        return f"diffusion_model_input_blocks_{1 + block * 3 + layer}_{1 if kind == 'attentions' else 0}_{rest}"
    if match := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key):
        kind, layer, rest = match[1], int(match[2]), match[3]
        return f"diffusion_model_middle_block_{1 if kind == 'attentions' else layer * 2}_{rest}"
    if match := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        rest = suffixes.get(rest, rest) if kind == "resnets" else rest
        return f"diffusion_model_output_blocks_{block * 3 + layer}_{1 if kind == 'attentions' else 0}_{rest}"
    return key


def a1111_module(key: str, modules: dict[str, str]) -> str | None:
    """The LDM module A1111's load_network patches with `key` (None: "failed to match keys")."""
    found = modules.get(a1111_convert_diffusers_name_to_compvis(key))
    if found is None and "lora_unet" in key:
        found = modules.get(key.replace("lora_unet", "diffusion_model"))
    return found


def test_webui_lora_keys_land_on_the_trained_modules_in_a1111_and_comfyui(leap_tiny, scaled_run):
    """leap-tiny has one layer per block: its LDM names are written, and both webuis map every key to
    the LDM module of the diffusers module that was trained (up_blocks.1 included)."""
    _, result, seen = scaled_run
    config = leap_tiny_ldm_config(leap_tiny)
    diffusers_to_ldm = comfy_unet_to_diffusers(config)
    ldm_to_diffusers = {ldm.removesuffix(".weight"): d.removesuffix(".weight") for d, ldm in diffusers_to_ldm.items()}
    comfy = comfyui_unet_key_map(config)
    a1111_modules = {"diffusion_model_" + ldm.replace(".", "_"): ldm for ldm in ldm_to_diffusers}
    trained = {name.removeprefix("lora_unet_") for name in seen["deltas"] if name.startswith("lora_unet_")}
    keys = {
        key.split(".")[0]
        for key in load_file(str(webui_lora_path(result)))
        if key.startswith("lora_unet_") and key.endswith(".lora_down.weight")
    }
    assert keys and all(re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_", key) for key in keys)
    landed = set()
    for key in keys:
        via_comfy = comfy[key].removeprefix("diffusion_model.").removesuffix(".weight")
        via_a1111 = a1111_module(key, a1111_modules)
        assert via_a1111 == via_comfy, key
        landed.add(ldm_to_diffusers[via_comfy].replace(".", "_"))
    assert landed == trained
    assert any(name.startswith("up_blocks_1_attentions_1_") for name in landed)
    assert any(name.startswith("mid_block_attentions_0_") for name in landed)

    # The diffusers-style name kohya's converter writes for SD: A1111's SD arithmetic puts leap-tiny's
    # up_blocks.1.attentions.0 on output_blocks.3, which is up_blocks.1.attentions.1.
    wrong = a1111_module("lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q", a1111_modules)
    assert ldm_to_diffusers[wrong] == "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q"


def test_ldm_names_follow_the_layers_per_block_and_sd_layouts_keep_kohyas_names():
    from models.trainer.export import BaseDescription, _webui_unet_keys, ldm_unet_module

    lora = {"up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(1)}
    sd15 = BaseDescription("sd15", 768, "epsilon", 512)
    assert list(_webui_unet_keys(lora, sd15)) == list(lora)  # A1111's arithmetic is right for SD's layout
    tiny = BaseDescription("leap-tiny", 64, "epsilon", 32, layers_per_block=(1, 1))
    assert list(_webui_unet_keys(lora, tiny)) == ["output_blocks.2.1.transformer_blocks.0.attn1.to_q.lora_A.weight"]
    assert ldm_unet_module("up_blocks.1.attentions.0.proj_in", (2, 2, 2, 2)) == "output_blocks.3.1.proj_in"
    assert ldm_unet_module("down_blocks.2.attentions.1.proj_in", (2, 2, 2, 2)) == "input_blocks.8.1.proj_in"
    assert ldm_unet_module("up_blocks.1.attentions.0.proj_in", (1, 1)) == "output_blocks.2.1.proj_in"
    assert ldm_unet_module("mid_block.attentions.0.proj_in", (1, 1)) == "middle_block.1.proj_in"


def test_webui_embedding_file_is_what_a1111_and_comfyui_embedding_loaders_read(leap_tiny, scaled_run):
    """Both loaders take a single-tensor safetensors file (A1111: its one value; ComfyUI: "clip_l" or
    else its first value) and call it by the file's stem; diffusers reads it with token=."""
    out, result, seen = scaled_run
    (path,) = [a.path for a in result.artifacts if a.kind == "webui_embedding"]
    assert path.name == "leap.safetensors"
    tensors = load_file(str(path))
    assert list(tensors) == ["emb_params"]
    torch.testing.assert_close(tensors["emb_params"], load_file(str(out / "learned_embeds.safetensors"))["<leap>"])
    pipeline = StableDiffusionPipeline.from_pretrained(leap_tiny)
    pipeline.load_textual_inversion(str(path), token="leap")
    pipeline.load_lora_weights(str(out))
    torch.testing.assert_close(prediction(pipeline, "a photo of a leap"), seen["prediction"], atol=2e-5, rtol=1e-4)
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["modelspec.architecture"] == "leap-tiny/textual-inversion"


def test_files_token_and_metadata_are_named_after_the_training(leap_tiny, concept_images, tmp_path):
    config = TrainConfig(
        base_model=leap_tiny,
        mode="pivotal",
        init="token",
        steps=2,
        batch_size=2,
        token="<leap-1a2b3c4d>",
        lora_rank=RANK,
        lora_alpha=ALPHA,
    )
    result = train(config, concept_images, tmp_path, registry=REGISTRY)
    names = {a.kind: a.name for a in result.artifacts}
    assert names["webui"] == "leap-1a2b3c4d_lora.safetensors"
    assert names["webui_embedding"] == "leap-1a2b3c4d.safetensors"
    tensors = load_file(str(tmp_path / names["webui"]))
    assert "bundle_emb.<leap-1a2b3c4d>.string_to_param.*" in tensors
    with safe_open(str(tmp_path / names["webui"]), "pt") as handle:
        metadata = handle.metadata()
    assert {
        key: metadata[key]
        for key in (
            "ss_network_module",
            "ss_network_dim",
            "ss_network_alpha",
            "ss_base_model_version",
            "ss_v2",
            "ss_output_name",
            "modelspec.sai_model_spec",
            "modelspec.architecture",
            "modelspec.title",
            "modelspec.trigger_phrase",
        )
    } == {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "2",
        "ss_network_alpha": "8",
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_output_name": "leap-1a2b3c4d",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "leap-tiny/lora",
        "modelspec.title": "leap-1a2b3c4d",
        "modelspec.trigger_phrase": "<leap-1a2b3c4d>",
    }
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["name"] == "leap-1a2b3c4d" and manifest["lora_alpha"] == ALPHA

    named = TrainConfig(
        base_model=leap_tiny, mode="textual_inversion", init="token", steps=1, batch_size=1, name="my_cat"
    )
    kinds = {a.kind: a.name for a in train(named, concept_images, tmp_path / "named", registry=REGISTRY).artifacts}
    # textual inversion has no LoRA: no LoRA file, the embedding file serves A1111 and ComfyUI.
    assert kinds == {
        "embedding": "learned_embeds.safetensors",
        "webui_embedding": "my_cat.safetensors",
        "manifest": "manifest.json",
    }


def test_the_generated_token_is_one_added_token(leap_tiny):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(leap_tiny, subfolder="tokenizer")
    before = len(tokenizer)
    tokenizer.add_tokens(["<leap-1a2b3c4d>"])
    ids = tokenizer("a photo of a <leap-1a2b3c4d>", add_special_tokens=False).input_ids
    assert ids[-1] == before and ids.count(before) == 1


@pytest.mark.parametrize(
    ("width", "prediction_type", "resolution", "expected"),
    [
        (768, "epsilon", 512, ("sd_v1", "stable-diffusion-v1")),
        (1024, "epsilon", 512, ("sd_v2", "stable-diffusion-v2-512")),
        (1024, "v_prediction", 768, ("sd_v2", "stable-diffusion-v2-768-v")),
        (64, "epsilon", 32, ("sd_v1", "leap-tiny")),
    ],
)
def test_architecture_follows_the_text_encoder(width, prediction_type, resolution, expected):
    from models.trainer.export import BaseDescription, architecture

    assert architecture(BaseDescription("leap-tiny", width, prediction_type, resolution)) == expected


def test_outputs_name_the_base_model_without_its_server_path(leap_tiny, random_tiny, concept_images, tmp_path):
    config = TrainConfig(
        base_model=random_tiny, base_model_name="tiny-v1", mode="lora", init="token", steps=1, batch_size=1
    )
    train(config, concept_images, tmp_path / "given", registry=REGISTRY)
    manifest = (tmp_path / "given" / "manifest.json").read_text()
    assert json.loads(manifest)["base_model"] == "tiny-v1"
    assert str(Path(random_tiny).parent) not in manifest
    with safe_open(str(tmp_path / "given" / "leap_lora.safetensors"), "pt") as handle:
        assert handle.metadata()["ss_sd_model_name"] == "tiny-v1"

    # `leap train --base-model /some/folder`: the folder's name; the registered folder: its id.
    for base_model, expected in ((random_tiny, Path(random_tiny).name), (leap_tiny, "leap-tiny")):
        out = tmp_path / expected
        train(
            TrainConfig(base_model=base_model, mode="textual_inversion", init="token", steps=1, batch_size=1),
            concept_images,
            out,
            registry=REGISTRY,
        )
        manifest = (out / "manifest.json").read_text()
        recorded = json.loads(manifest)
        assert recorded["base_model"] == recorded["config"]["base_model"] == expected
        assert str(Path(base_model).parent) not in manifest


def test_a_base_model_that_fails_to_load_is_named_without_its_server_path(concept_images, tmp_path):
    folder = tmp_path / "private" / "sd15"
    folder.mkdir(parents=True)
    config = TrainConfig(base_model=str(folder), base_model_name="sd15", init="token", steps=1, batch_size=1)
    with pytest.raises(BaseModelError) as error:
        train(config, concept_images, tmp_path / "out", registry=REGISTRY)
    assert "sd15" in error.value.message and str(tmp_path) not in error.value.message


def test_a_booster_that_does_not_fit_is_reported_without_server_paths(random_tiny, concept_images, tmp_path):
    booster = Path(__file__).resolve().parents[2] / "models" / "booster" / "weights" / "leap-tiny"
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        f"default: other\nmodels:\n  other:\n    path: {random_tiny}\n    resolution: 32\n    booster: {booster}\n"
    )
    other = load_registry(registry)
    config = TrainConfig(base_model="other", init="booster", mode="textual_inversion", steps=1, batch_size=1)
    with pytest.raises(BaseModelError) as error:
        train(config, concept_images, tmp_path / "out", registry=other, booster=registered_booster(other))
    assert "other" in error.value.message
    assert str(booster.parent) not in error.value.message and str(Path(random_tiny).parent) not in error.value.message
