import json
import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from models.booster.resolver import registered_booster
from models.registry import load_registry
from models.trainer.base_model import clear_cache
from models.trainer.concept import InitialState
from models.trainer.config import TrainConfig
from models.trainer.errors import InvalidConfigError, TrainingCanceled
from models.trainer.export import sha256_file
from models.trainer.train import Job, train

PROMPT = "a photo of a <leap>"
REGISTRY = load_registry()


def fixed_inputs(channels: int = 4, size: int = 8):
    generator = torch.Generator().manual_seed(123)
    latents = torch.randn(2, channels, size, size, generator=generator)
    return latents, torch.tensor([300, 700])


@torch.no_grad()
def job_prediction(job: Job) -> torch.Tensor:
    latents, timesteps = fixed_inputs()
    hidden = job.concept.encode_prompts([PROMPT] * 2)
    return job.base.unet(latents, timesteps, hidden).sample.clone()


@torch.no_grad()
def pipeline_prediction(pipeline: StableDiffusionPipeline) -> torch.Tensor:
    latents, timesteps = fixed_inputs()
    ids = pipeline.tokenizer(
        [PROMPT] * 2, padding="max_length", max_length=pipeline.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    return pipeline.unet(latents, timesteps, pipeline.text_encoder(ids)[0]).sample


@pytest.mark.parametrize("mode", ["textual_inversion", "lora", "pivotal"])
def test_each_mode_trains_and_its_outputs_load_into_a_fresh_pipeline(leap_tiny, concept_images, tmp_path, mode):
    seen: list[torch.Tensor] = []
    config = TrainConfig(
        base_model=leap_tiny,
        mode=mode,
        init="token",
        steps=6,
        batch_size=2,
        seed=1,
        embedding_lr=5e-2,
        lora_lr=5e-2,
        pivot_embedding_lr=1e-2,
        train_text_encoder_lora=(mode == "lora"),
    )
    result = train(
        config,
        concept_images,
        tmp_path,
        registry=REGISTRY,
        eval_steps=(0, 6),
        eval_hook=lambda step, job: seen.append(job_prediction(job)),
    )

    assert len(seen) == 2  # at step 0 and after step 6
    kinds = {a.kind for a in result.artifacts}
    assert kinds == (
        {"embedding", "webui_embedding", "manifest"} | ({"lora", "webui"} if mode != "textual_inversion" else set())
    )
    for artifact in result.artifacts:
        assert artifact.sha256 == sha256_file(artifact.path)

    tuned = StableDiffusionPipeline.from_pretrained(leap_tiny)
    tuned.load_textual_inversion(str(tmp_path / "learned_embeds.safetensors"))
    if mode != "textual_inversion":
        tuned.load_lora_weights(str(tmp_path))
    loaded = pipeline_prediction(tuned)
    torch.testing.assert_close(loaded, seen[-1], atol=2e-5, rtol=1e-4)

    # Generations with the token move as trained: the same seed differs from an untrained token.
    reference = StableDiffusionPipeline.from_pretrained(leap_tiny)
    reference.load_textual_inversion(
        {
            "<leap>": reference.text_encoder.get_input_embeddings()
            .weight[reference.tokenizer.convert_tokens_to_ids("object")]
            .detach()
            .clone()[None]
        }
    )
    assert not torch.allclose(pipeline_prediction(reference), loaded, atol=1e-4)


def test_webui_file_bundles_the_embedding_with_kohya_lora_keys(leap_tiny, concept_images, tmp_path):
    config = TrainConfig(
        base_model=leap_tiny,
        mode="lora",
        init="token",
        steps=2,
        batch_size=2,
        train_text_encoder_lora=True,
        lora_rank=2,
    )
    train(config, concept_images, tmp_path, registry=REGISTRY)
    tensors = load_file(str(tmp_path / "leap_lora.safetensors"))
    assert tensors["bundle_emb.<leap>.string_to_param.*"].shape == (1, 64)
    unet_keys = [k for k in tensors if k.startswith("lora_unet_")]
    te_keys = [k for k in tensors if k.startswith("lora_te_text_model_encoder_layers_")]
    assert unet_keys and te_keys
    assert any(k.endswith(".lora_down.weight") for k in unet_keys) and any(k.endswith(".alpha") for k in te_keys)
    down = next(k for k in unet_keys if k.endswith(".lora_down.weight"))
    assert tensors[down].shape[0] == 2


def test_manifest_records_the_run(leap_tiny, concept_images, tmp_path):
    config = TrainConfig(base_model=leap_tiny, mode="pivotal", init="token", steps=4, batch_size=2, seed=7)
    result = train(config, concept_images, tmp_path, registry=REGISTRY)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["mode"] == "pivotal" and manifest["seed"] == 7 and manifest["steps"] == 4
    assert manifest["pivot_step"] == 2 and manifest["init_used"] == "token"
    assert manifest["learning_rates"]["embedding"] > manifest["learning_rates"]["pivot_embedding"]
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(tmp_path / name)
    assert manifest["loss"]["count"] == 4 and result.manifest["timings"]["steps_per_second"] > 0


def test_same_seed_gives_identical_outputs(leap_tiny, concept_images, tmp_path):
    config = TrainConfig(base_model=leap_tiny, mode="pivotal", init="token", steps=4, batch_size=2, seed=3)
    first = train(config, concept_images, tmp_path / "a", registry=REGISTRY)
    second = train(config, concept_images, tmp_path / "b", registry=REGISTRY)
    assert {a.name: a.sha256 for a in first.artifacts if a.kind != "manifest"} == {
        a.name: a.sha256 for a in second.artifacts if a.kind != "manifest"
    }


B_JOB = """
import sys, json, torch
from pathlib import Path
from models.reference.concepts import benchmark_concepts
from models.trainer.config import TrainConfig
from models.registry import load_registry
from models.trainer.train import train
torch.set_num_threads(2)
config = TrainConfig(base_model=sys.argv[1], mode="pivotal", init="token", steps=4, batch_size=2, seed=5)
result = train(config, benchmark_concepts("dev")[1].views(), Path(sys.argv[2]), registry=load_registry())
print(json.dumps({a.name: a.sha256 for a in result.artifacts if a.kind != "manifest"}))
"""


def test_a_job_leaves_no_trace_for_the_next_one(leap_tiny, concept_images, tmp_path):
    from models.reference.concepts import benchmark_concepts

    job_a = TrainConfig(
        base_model=leap_tiny,
        mode="lora",
        init="token",
        token="<other>",
        steps=3,
        batch_size=2,
        num_vectors=2,
        train_text_encoder_lora=True,
        seed=9,
    )
    train(job_a, concept_images, tmp_path / "a", registry=REGISTRY)
    job_b = TrainConfig(base_model=leap_tiny, mode="pivotal", init="token", steps=4, batch_size=2, seed=5)
    after_a = train(job_b, benchmark_concepts("dev")[1].views(), tmp_path / "b", registry=REGISTRY)
    fresh = subprocess.run(
        [sys.executable, "-c", B_JOB, leap_tiny, str(tmp_path / "fresh")], check=True, capture_output=True, text=True
    )
    expected = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert {a.name: a.sha256 for a in after_a.artifacts if a.kind != "manifest"} == expected


def test_progress_callback_and_cancellation(leap_tiny, concept_images, tmp_path):
    updates = []
    config = TrainConfig(
        base_model=leap_tiny, mode="textual_inversion", init="token", steps=6, batch_size=1, progress_every=2
    )
    train(config, concept_images, tmp_path / "done", registry=REGISTRY, on_progress=updates.append)
    assert [u.step for u in updates] == [2, 4, 6] and all(u.total == 6 for u in updates)
    assert updates[-1].eta_s == 0 and updates[0].eta_s > 0

    calls = iter(range(100))
    with pytest.raises(TrainingCanceled, match="step 3"):
        train(config, concept_images, tmp_path / "canceled", registry=REGISTRY, should_stop=lambda: next(calls) >= 3)
    assert not (tmp_path / "canceled").exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"token": "leap"}, "token"),
        ({"steps": 0}, "steps"),
        ({"mode": "dreambooth"}, "mode"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"num_vectors": 99}, "num_vectors"),
        ({"name": "two words"}, "name"),
        ({"name": "Learned_Embeds"}, "name"),
        ({"token": "<pytorch_lora_weights>"}, "token"),
        ({"lora_alpha": 0.0}, "lora_alpha"),
        ({"initializer_token": "red striped"}, "initializer_token"),
    ],
)
def test_invalid_configs_name_the_field(random_tiny, concept_images, tmp_path, overrides, field):
    config = TrainConfig(base_model=random_tiny, **{"init": "token", "steps": 1, "batch_size": 1, **overrides})
    with pytest.raises(InvalidConfigError) as error:
        train(config, concept_images, tmp_path, registry=REGISTRY)
    assert error.value.field == field


def test_initial_state_is_used_and_checked(random_tiny, concept_images, tmp_path):
    config = TrainConfig(
        base_model=random_tiny, mode="textual_inversion", init="token", steps=1, batch_size=1, embedding_lr=1e-9
    )
    start = torch.full((1, 64), 0.25)
    result = train(config, concept_images, tmp_path, registry=REGISTRY, initial_state=InitialState(embedding=start))
    assert result.init_used == "state"
    saved = load_file(str(tmp_path / "learned_embeds.safetensors"))["<leap>"]
    torch.testing.assert_close(saved, start, atol=1e-6, rtol=0)
    with pytest.raises(InvalidConfigError, match="shape"):
        train(
            config,
            concept_images,
            tmp_path / "bad",
            registry=REGISTRY,
            initial_state=InitialState(embedding=torch.zeros(1, 768)),
        )


def test_booster_init_falls_back_to_the_token_where_no_booster_exists(random_tiny, concept_images, tmp_path):
    config = TrainConfig(base_model=random_tiny, mode="textual_inversion", init="booster", steps=1, batch_size=1)
    result = train(config, concept_images, tmp_path, registry=REGISTRY, booster=registered_booster(REGISTRY))
    assert result.init_used == "token" and "no booster" in result.init_note
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (manifest["init_used"], manifest["init_note"]) == ("token", result.init_note)


def test_cli_trains_from_a_folder_and_reports_bad_images(random_tiny, concept_images, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(concept_images[:3]):
        image.save(images / f"view-{index}.png")
    command = [
        sys.executable,
        "-m",
        "models.trainer",
        str(images),
        "--base-model",
        random_tiny,
        "--out",
        str(tmp_path / "out"),
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--init",
        "token",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"] == 2 and (tmp_path / "out" / "manifest.json").is_file()
    assert (tmp_path / "out" / "leap.safetensors").is_file()  # no --name: the token <leap> names the files

    named = subprocess.run(
        [
            *command[:-8],
            "--out",
            str(tmp_path / "named"),
            "--name",
            "red-cube",
            "--mode",
            "lora",
            "--lora-rank",
            "2",
            "--lora-alpha",
            "6",
            "--steps",
            "1",
            "--batch-size",
            "1",
            "--init",
            "token",
        ],
        capture_output=True,
        text=True,
    )
    assert named.returncode == 0, named.stderr
    assert {"red-cube.safetensors", "red-cube_lora.safetensors"} <= set(json.loads(named.stdout)["files"])
    manifest = json.loads((tmp_path / "named" / "manifest.json").read_text())
    assert (manifest["token"], manifest["lora_alpha"], manifest["base_model"]) == ("<red-cube>", 6.0, "pipeline")

    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    failed = subprocess.run(command, capture_output=True, text=True)
    assert failed.returncode == 2 and "broken.png" in failed.stderr


def test_fresh_cache_reloads(random_tiny, concept_images, tmp_path):
    config = TrainConfig(base_model=random_tiny, mode="textual_inversion", init="token", steps=1, batch_size=1)
    first = train(config, concept_images, tmp_path / "a", registry=REGISTRY)
    clear_cache()
    second = train(config, concept_images, tmp_path / "b", registry=REGISTRY)
    assert first.artifacts[0].sha256 == second.artifacts[0].sha256
