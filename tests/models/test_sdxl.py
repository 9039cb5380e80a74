"""SDXL on a tiny random-weight pipeline built from configs: two tokenizers and encoders, pooled
embeddings and time ids, every mode, and files that diffusers, kohya loaders and the webuis read."""

import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import load_file

from models.enums import Family
from models.registry import load_registry
from models.trainer.base_model import load_base, pick_device
from models.trainer.concept import ADAPTER_NAME
from models.trainer.config import TrainConfig
from models.trainer.sdxl import SDXLConcept, kohya_keys, split_text_encoder_lora
from models.trainer.sdxl_random import TINY_WIDTHS
from models.trainer.train import Job, train

REGISTRY = load_registry()
RANK, ALPHA = 2, 8.0  # scale 4: a file read at scale 1 is far off
PROMPT = "a photo of {}"
SIZE = 32


def base_weights(base) -> dict[str, torch.Tensor]:
    """Every frozen weight of the pipeline, copied."""
    modules = {"unet": base.unet, "te1": base.text_encoder, "te2": base.text_encoder_2, "vae": base.vae}
    return {f"{p}.{k}": v.detach().clone() for p, m in modules.items() for k, v in m.state_dict().items()}


def fixed_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(123)
    return torch.randn(2, 4, SIZE // 2, SIZE // 2, generator=generator), torch.tensor([300, 700])


def job_prediction(job: Job) -> torch.Tensor:
    latents, timesteps = fixed_inputs()
    with torch.no_grad():
        hidden, added = job.concept.conditioning([job.concept.prompt(PROMPT)] * 2, (SIZE, SIZE))
        return job.base.unet(latents, timesteps, hidden, added_cond_kwargs=added).sample.clone()


def pipeline_prediction(pipeline: StableDiffusionXLPipeline, prompt: str) -> torch.Tensor:
    latents, timesteps = fixed_inputs()
    with torch.no_grad():
        hidden, _, pooled, _ = pipeline.encode_prompt(
            [prompt] * 2, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=hidden.dtype)
        added = {"text_embeds": pooled, "time_ids": time_ids}
        return pipeline.unet(latents, timesteps, hidden, added_cond_kwargs=added).sample


def trained_deltas(job: Job) -> dict[str, torch.Tensor]:
    """Each LoRA module's weight delta as the training applied it, by its diffusers/transformers name."""
    deltas = {}
    for prefix, model in (("unet", job.base.unet), ("te1", job.base.text_encoder), ("te2", job.base.text_encoder_2)):
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
                # transformers 5 flattened CLIPTextModel, not CLIPTextModelWithProjection: one naming for both
                name = name.removeprefix("text_model.")
                deltas[f"{prefix}.{name}"] = module.get_delta_weight(ADAPTER_NAME).detach().clone()
    return deltas


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> str:
    from models.trainer.sdxl_random import build_tiny_sdxl

    return str(build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "pipeline"))


def run(tiny_sdxl, images, out_dir: Path, **options):
    """A short fixed-step training; returns (result, what on_finish saw)."""
    seen: dict = {}

    def capture(job: Job) -> None:
        seen["embedding"] = job.concept.embedding.detach().clone()
        seen["prediction"] = job_prediction(job)
        seen["deltas"] = trained_deltas(job)
        seen["lora"] = job.concept.lora_state()

    config = TrainConfig(base_model=tiny_sdxl, **{"steps": 4, "seed": 0, **options})
    result = train(config, images, out_dir, registry=REGISTRY, on_finish=capture)
    return result, seen


@pytest.fixture(scope="module")
def pivotal_run(tiny_sdxl, concept_images, tmp_path_factory):
    """Pivotal with LoRA on the UNet and both encoders, two vectors, alpha != rank."""
    out = tmp_path_factory.mktemp("sdxl-pivotal")
    return run(
        tiny_sdxl,
        concept_images,
        out,
        mode="pivotal",
        num_vectors=2,
        lora_rank=RANK,
        lora_alpha=ALPHA,
        train_text_encoder_lora=True,
        embedding_lr=0.05,
        pivot_embedding_lr=0.05,
        lora_lr=0.01,
        name="sdxl-concept",
    )


def test_sdxl_is_detected_from_model_index_and_loads_both_encoders(tiny_sdxl):
    base = load_base(tiny_sdxl, pick_device("cpu"))
    assert base.family == Family.SDXL and base.text_widths == TINY_WIDTHS
    assert base.embedding_width == sum(TINY_WIDTHS) and base.resolution == SIZE
    assert base.vae.dtype == torch.float32


def test_the_registry_names_the_family(tmp_path, tiny_sdxl):
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"models:\n  tiny-xl: {{path: {tiny_sdxl}, resolution: 32, family: sdxl}}\n")
    assert load_registry(registry).models["tiny-xl"].family == Family.SDXL
    registry.write_text(f"models:\n  tiny-xl: {{path: {tiny_sdxl}, resolution: 32, family: sd3}}\n")
    with pytest.raises(ValueError, match="family 'sd3'"):
        load_registry(registry)


@pytest.mark.parametrize("mode", ["textual_inversion", "lora", "pivotal"])
def test_each_mode_trains_its_parts_in_both_encoders_and_leaves_the_base_untouched(
    mode, tiny_sdxl, concept_images, tmp_path
):
    base = load_base(tiny_sdxl, pick_device("cpu"))
    before = base_weights(base)
    token_start = SDXLConcept(base, token="<leap>", num_vectors=1)
    token_start.init_from_token("object")
    start = token_start.embedding.detach().clone()
    token_start.close()

    result, seen = run(tiny_sdxl, concept_images, tmp_path, mode=mode, embedding_lr=0.05, lora_lr=0.01)

    moved = (seen["embedding"] - start).abs()[0]
    clip_l, clip_g = moved[: TINY_WIDTHS[0]], moved[TINY_WIDTHS[0] :]
    trains_embedding = mode != "lora"
    assert bool(clip_l.max() > 1e-4) == trains_embedding and bool(clip_g.max() > 1e-4) == trains_embedding
    assert bool(seen["lora"][0]) == (mode != "textual_inversion")
    after = base_weights(base)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before), "a shared base weight changed"
    names = {a.name for a in result.artifacts}
    assert ("pytorch_lora_weights.safetensors" in names) == (mode != "textual_inversion")
    assert result.manifest["resolution"] == SIZE and len(result.losses) == 4


def test_the_token_is_one_new_token_in_each_tokenizer(tiny_sdxl):
    base = load_base(tiny_sdxl, pick_device("cpu"))
    concept = SDXLConcept(base, token="<leap>", num_vectors=3)
    try:
        assert concept.tokens == ["<leap>", "<leap>_1", "<leap>_2"]
        assert concept.token_ids == list(range(len(base.tokenizer), len(base.tokenizer) + 3))
        assert concept.token_ids_2 == list(range(len(base.tokenizer_2), len(base.tokenizer_2) + 3))
        assert len(base.tokenizer) == concept.base_vocab_size  # the shared tokenizers gain nothing
    finally:
        concept.close()
    # Hooks come off both encoders: the base encodes as loaded.
    assert not base.text_encoder.get_input_embeddings()._forward_hooks
    assert not base.text_encoder_2.get_input_embeddings()._forward_hooks


def test_diffusers_loads_the_files_and_reproduces_the_trained_model(tiny_sdxl, pivotal_run):
    result, seen = pivotal_run
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipeline.load_lora_weights(result.out_dir)
    embeddings = load_file(str(result.out_dir / "learned_embeds.safetensors"))
    assert set(embeddings) == {"clip_l", "clip_g"}
    pipeline.load_textual_inversion(
        embeddings["clip_l"], token="<leap>", text_encoder=pipeline.text_encoder, tokenizer=pipeline.tokenizer
    )
    pipeline.load_textual_inversion(
        embeddings["clip_g"], token="<leap>", text_encoder=pipeline.text_encoder_2, tokenizer=pipeline.tokenizer_2
    )
    loaded = pipeline_prediction(pipeline, PROMPT.format("<leap>"))
    assert (loaded - seen["prediction"]).abs().max() <= 1e-4
    # Without the files the prediction differs: the check above can fail.
    plain = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    assert (pipeline_prediction(plain, PROMPT.format("object")) - seen["prediction"]).abs().max() > 1e-3


def test_webui_embedding_file_has_clip_l_and_clip_g_and_says_sdxl(pivotal_run):
    result, seen = pivotal_run
    path = result.out_dir / "sdxl-concept.safetensors"
    tensors = load_file(str(path))
    assert set(tensors) == {"clip_l", "clip_g"}
    assert tensors["clip_l"].shape == (2, TINY_WIDTHS[0]) and tensors["clip_g"].shape == (2, TINY_WIDTHS[1])
    torch.testing.assert_close(torch.cat([tensors["clip_l"], tensors["clip_g"]], dim=1), seen["embedding"])
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["modelspec.architecture"] == "stable-diffusion-xl-v1-base/textual-inversion"


# How ComfyUI finds the module a kohya key patches, re-implemented from its source: comfy/utils.py
# unet_to_diffusers (LDM names of a UNet config, `transformer_depth` per layer, each attention's
# transformer_blocks.0..depth-1) and comfy/lora.py model_lora_keys_unet (lora_unet_<LDM name>) and
# model_lora_keys_clip (SDXL: lora_te1_ -> clip_l, lora_te2_ -> clip_g, text_model.encoder.layers).
LORA_CLIP_MAP = {
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}
TRANSFORMER_WEIGHTS = tuple(
    f"{attention}.{projection}.weight"
    for attention in ("attn1", "attn2")
    for projection in ("to_q", "to_k", "to_v", "to_out.0")
)


def comfy_ldm_config(unet_config) -> dict:
    """The LDM UNet config ComfyUI detects for a diffusers SDXL UNet (depths per layer)."""
    blocks, layers = len(unet_config.down_block_types), unet_config.layers_per_block
    depths = unet_config.transformer_layers_per_block
    down = [
        depths[b] if kind.startswith("CrossAttn") else 0
        for b, kind in enumerate(unet_config.down_block_types)
        for _ in range(layers)
    ]
    up = [
        list(reversed(depths))[b] if kind.startswith("CrossAttn") else 0
        for b, kind in enumerate(unet_config.up_block_types)
        for _ in range(layers + 1)
    ]
    return {
        "num_res_blocks": [layers] * blocks,
        "channel_mult": list(range(1, blocks + 1)),
        "transformer_depth": down,
        "transformer_depth_output": list(reversed(up)),  # popped from the end: up_blocks.0 first
        "transformer_depth_middle": depths[-1],
    }


def comfy_unet_to_diffusers(config: dict) -> dict[str, str]:
    num_res_blocks, blocks = config["num_res_blocks"], len(config["channel_mult"])
    depth, depth_out = list(config["transformer_depth"]), list(config["transformer_depth_output"])
    mapping: dict[str, str] = {}

    def attention(diffusers: str, ldm: str, count: int) -> None:
        for t in range(count):
            for name in TRANSFORMER_WEIGHTS:
                mapping[f"{diffusers}.transformer_blocks.{t}.{name}"] = f"{ldm}.transformer_blocks.{t}.{name}"

    for x in range(blocks):
        n = 1 + (num_res_blocks[x] + 1) * x
        for i in range(num_res_blocks[x]):
            attention(f"down_blocks.{x}.attentions.{i}", f"input_blocks.{n}.1", depth.pop(0))
            n += 1
    attention("mid_block.attentions.0", "middle_block.1", config["transformer_depth_middle"])
    for x in range(blocks):
        n = (list(reversed(num_res_blocks))[x] + 1) * x
        for i in range(list(reversed(num_res_blocks))[x] + 1):
            attention(f"up_blocks.{x}.attentions.{i}", f"output_blocks.{n}.1", depth_out.pop())
            n += 1
    return mapping


def comfy_key_map(unet_config, text_layers: tuple[int, int]) -> dict[str, str]:
    """kohya module key -> the ComfyUI model weight it patches (UNet and both CLIPs)."""
    key_map = {}
    for diffusers, ldm in comfy_unet_to_diffusers(comfy_ldm_config(unet_config)).items():
        key_map["lora_unet_" + ldm.removesuffix(".weight").replace(".", "_")] = f"diffusion_model.{ldm}"
        key_map["lora_unet_" + diffusers.removesuffix(".weight").replace(".", "_")] = f"diffusion_model.{ldm}"
    for prefix, clip, count in (("lora_te1", "clip_l", text_layers[0]), ("lora_te2", "clip_g", text_layers[1])):
        for b in range(count):
            for c, kohya in LORA_CLIP_MAP.items():
                weight = f"{clip}.transformer.text_model.encoder.layers.{b}.{c}.weight"
                key_map[f"{prefix}_text_model_encoder_layers_{b}_{kohya}"] = weight
    return key_map


def test_kohya_file_keys_land_on_the_trained_modules_in_comfyui_at_the_trained_scale(tiny_sdxl, pivotal_run):
    result, seen = pivotal_run
    base = load_base(tiny_sdxl, pick_device("cpu"))
    unet_map = comfy_unet_to_diffusers(comfy_ldm_config(base.unet.config))
    ldm_to_diffusers = {ldm.removesuffix(".weight"): d.removesuffix(".weight") for d, ldm in unet_map.items()}
    layers = (base.text_encoder.config.num_hidden_layers, base.text_encoder_2.config.num_hidden_layers)
    comfy = comfy_key_map(base.unet.config, layers)
    tensors = load_file(str(result.out_dir / "sdxl-concept_lora.safetensors"))
    modules = {key.split(".")[0] for key in tensors if not key.startswith("bundle_emb.")}
    assert {m.split("_")[1] for m in modules} == {"unet", "te1", "te2"}
    assert all(re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_", m) for m in modules if "unet" in m)

    landed = {}
    for module in modules:
        weight = comfy[module].removesuffix(".weight")  # a KeyError: ComfyUI would drop the key
        if weight.startswith("diffusion_model."):
            landed[module] = "unet." + ldm_to_diffusers[weight.removeprefix("diffusion_model.")]
        else:
            clip, _, name = weight.partition(".transformer.")
            landed[module] = ("te1." if clip == "clip_l" else "te2.") + name.removeprefix("text_model.")
    assert set(landed.values()) == set(seen["deltas"])
    assert any(name.startswith("unet.mid_block.attentions.0.transformer_blocks.1.") for name in landed.values())
    for module, trained in landed.items():
        up, down = tensors[f"{module}.lora_up.weight"], tensors[f"{module}.lora_down.weight"]
        alpha = float(tensors[f"{module}.alpha"])
        assert alpha == ALPHA and down.shape[0] == RANK
        expected = seen["deltas"][trained]
        torch.testing.assert_close(alpha / down.shape[0] * (up @ down), expected, atol=1e-6, rtol=1e-5)

    assert set(tensors) >= {"bundle_emb.<leap>.clip_l", "bundle_emb.<leap>.clip_g"}
    with safe_open(str(result.out_dir / "sdxl-concept_lora.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert metadata["ss_network_alpha"] == "8" and metadata["ss_network_dim"] == str(RANK)
    assert metadata["ss_network_train_unet_only"] == "False"
    assert json.loads(metadata["leap"])["token"] == "<leap>"


def test_kohya_keys_name_both_encoders_apart():
    lora = {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(1, 4),
        "self_attn.q_proj.lora_A.weight": torch.zeros(1, 4),
        "text_encoder_2.self_attn.q_proj.lora_A.weight": torch.zeros(1, 4),
    }
    unet = {k: v for k, v in lora.items() if k.startswith("down_blocks")}
    text = {k: v for k, v in lora.items() if not k.startswith("down_blocks")}
    first, second = split_text_encoder_lora(text)
    assert list(first) == list(second) == ["self_attn.q_proj.lora_A.weight"]
    keys = set(kohya_keys(unet, text, layers=(2, 2, 2), alpha=4.0))
    assert keys == {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha",
        "lora_te1_text_model_self_attn_q_proj.lora_down.weight",
        "lora_te1_text_model_self_attn_q_proj.alpha",
        "lora_te2_text_model_self_attn_q_proj.lora_down.weight",
        "lora_te2_text_model_self_attn_q_proj.alpha",
    }


def test_a_job_without_steps_stops_by_its_evaluation_and_keeps_its_best_state(tiny_sdxl, concept_images, tmp_path):
    from models.trainer.config import StopRule

    rule = StopRule(eval_every=2, patience=1, min_delta=0.5, min_steps=2)
    config = TrainConfig(base_model=tiny_sdxl, mode="pivotal", max_steps=12, stopping=rule, lora_rank=2)
    result = train(config, concept_images, tmp_path, registry=REGISTRY)
    assert result.stop_reason == "converged" and result.steps < 12  # min_delta 50%: no evaluation improves that much
    stopping = result.manifest["stopping"]
    assert stopping["curve"][0][0] == 0 and len(stopping["curve"]) >= 2
    assert stopping["best_loss"] == min(loss for _, loss in stopping["curve"])


def test_previews_load_the_sdxl_files_and_leave_both_encoders_as_loaded(tiny_sdxl, pivotal_run, tmp_path):
    from models.trainer.preview import render_image_previews

    result, _ = pivotal_run
    base = load_base(tiny_sdxl, pick_device("cpu"))
    before = base_weights(base)
    previews = render_image_previews(
        tiny_sdxl, result.out_dir, token="<leap>", prompts=["a photo of <leap>"], seeds=(0,), steps=2, out_dir=tmp_path
    )
    assert (tmp_path / previews.grid).is_file() and previews.images[0]["name"] == "preview-1.png"
    after = base_weights(base)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert len(base.tokenizer) == len(base.tokenizer_2) == base.text_encoder.config.vocab_size


def test_the_documented_sdxl_registry_entry_registers_an_sdxl_model(tmp_path):
    """docs/base-models.md's entry, as written, is a valid registry with SDXL's family and image minimum."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "base-models.md").read_text()
    section = page.split("## Registering SDXL", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    (tmp_path / "registry.yaml").write_text(block.group(1))
    entry = load_registry(tmp_path / "registry.yaml").models["sdxl"]
    assert entry.family == Family.SDXL and entry.resolution == 1024 and entry.smallest_image_side == 512
    assert entry.defaults["pivotal"]["embedding_lr"] == 5e-4 and entry.defaults["lora"]["batch_size"] == 1


def test_lora_jobs_encode_each_prompt_once_and_train_as_without_the_cache(tiny_sdxl, concept_images, tmp_path):
    """With nothing trainable in the text path (LoRA on the UNet alone), both encoders run once per
    distinct prompt; the losses are those of encoding every step."""
    base = load_base(tiny_sdxl, pick_device("cpu"))
    rows: list[int] = []
    handle = base.text_encoder_2.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    try:
        cached, _ = run(tiny_sdxl, concept_images, tmp_path / "cached", mode="lora", batch_size=4, steps=6)
    finally:
        handle.remove()
    drawn = 6 * 4
    assert sum(rows) < drawn  # repeated templates were not encoded again

    def no_cache(self, prompts):
        return SDXLConcept._encode_now(self, prompts)

    original = SDXLConcept._encode
    SDXLConcept._encode = no_cache  # type: ignore[method-assign]
    try:
        plain, _ = run(tiny_sdxl, concept_images, tmp_path / "plain", mode="lora", batch_size=4, steps=6)
    finally:
        SDXLConcept._encode = original  # type: ignore[method-assign]
    assert plain.losses == pytest.approx(cached.losses, rel=1e-5)
