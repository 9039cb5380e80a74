from pathlib import Path

import pytest
import torch
from PIL import Image

from models.reference.concepts import benchmark_concepts

LEAP_TINY = Path(__file__).resolve().parents[2] / "models" / "reference" / "weights" / "leap-tiny"


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def leap_tiny() -> str:
    assert (LEAP_TINY / "model_index.json").is_file(), "leap-tiny weights are missing from the checkout"
    return str(LEAP_TINY)


@pytest.fixture(scope="session")
def random_tiny(tmp_path_factory) -> str:
    """An untrained pipeline of leap-tiny's shape: a base model with no booster registered."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from models.reference.architecture import make_sample_scheduler, make_text_encoder, make_unet, make_vae
    from models.reference.tokenizer import write_tokenizer

    root = tmp_path_factory.mktemp("random-tiny")
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(root / "tok"))
    torch.manual_seed(0)
    pipeline = StableDiffusionPipeline(
        vae=make_vae(),
        text_encoder=make_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=make_unet(),
        scheduler=make_sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(root / "pipeline")
    return str(root / "pipeline")


@pytest.fixture(scope="session")
def concept_images() -> list[Image.Image]:
    return benchmark_concepts("dev")[0].views()


@pytest.fixture(scope="session")
def smol_data_dir(tmp_path_factory) -> Path:
    """A data directory holding SmolLM2 converted from the wheel's GGUF (once per test session)."""
    from models.registry import load_registry
    from models.text.base_model import resolve_text_model

    data_dir = tmp_path_factory.mktemp("leap-data")
    resolve_text_model("smollm2-135m", data_dir, load_registry())
    return data_dir
