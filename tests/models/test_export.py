"""The exported files in other tools' terms: the trained LoRA scale, the embedding file A1111 and
ComfyUI read, file names and the kohya/modelspec metadata, and no server path in the manifest."""

import json
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
    out, _, seen = scaled_run
    pipeline = StableDiffusionPipeline.from_pretrained(leap_tiny)
    pipeline.load_textual_inversion(str(out / "learned_embeds.safetensors"))
    pipeline.load_lora_weights(str(out))
    torch.testing.assert_close(prediction(pipeline, "a photo of a <leap>"), seen["prediction"], atol=2e-5, rtol=1e-4)


def test_webui_file_gives_the_trained_deltas_by_the_kohya_convention(scaled_run):
    """A1111 and ComfyUI both apply alpha / rank (rank = lora_down's rows) to up @ down."""
    _, result, seen = scaled_run
    tensors = load_file(str(webui_lora_path(result)))
    deltas = seen["deltas"]
    assert deltas and {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_down.weight")} == set(deltas)
    for module, expected in deltas.items():
        down, up = tensors[f"{module}.lora_down.weight"], tensors[f"{module}.lora_up.weight"]
        alpha = float(tensors[f"{module}.alpha"])
        assert alpha == ALPHA and down.shape[0] == RANK
        torch.testing.assert_close(alpha / down.shape[0] * (up @ down), expected, atol=1e-6, rtol=1e-5)


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
