"""Image previews: the same prompts and seeds sampled from the base model and from the files a
training wrote, as a labelled before/after grid and one picture per prompt.

The fine-tuned side loads learned_embeds.safetensors and pytorch_lora_weights.safetensors with
diffusers' own loaders, exactly as a user would, so a preview proves the artifacts load. The
loaders write into the (shared, cached) base modules; the tokenizer is a copy and everything else is
put back afterwards, so the next job finds the base as it was loaded.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from diffusers import StableDiffusionPipeline
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from models.previews import Previews
from models.trainer.base_model import BaseComponents, load_base, pick_device, weight_dtype_for
from models.trainer.errors import TrainerError, TrainingCanceled
from models.trainer.evaluate import pipeline_for, sample_images
from models.trainer.export import EMBEDDING_FILE, LORA_FILE, artifact

PREVIEW_SEEDS = (0, 1)
PREVIEW_STEPS = 25
GRID_FILE = "preview.png"
LABEL_WIDTH = 200
ADAPTER_NAME = "leap-preview"


class PreviewError(TrainerError):
    """The files a training wrote did not load for its previews."""

    code = "invalid_artifacts"


def prompt_file(index: int) -> str:
    """The file of the index-th prompt's fine-tuned samples: preview-1.png, preview-2.png, ..."""
    return f"preview-{index + 1}.png"


def cell_size(resolution: int) -> int:
    """The grid's square per image: small models scaled up to 128 px, large ones down to 256 px."""
    return min(max(resolution, 128), 256)


def draw_grid(
    prompts: Sequence[str], before: Sequence[Image.Image], after: Sequence[Image.Image], cell: int
) -> Image.Image:
    """Base model vs. fine-tuned: two rows per prompt (before, after), one column per seed.
    `before` and `after` are prompt-major, as sample_images returns them."""
    seeds = len(before) // max(len(prompts), 1)
    grid = Image.new("RGB", (LABEL_WIDTH + cell * seeds, cell * 2 * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    for row_index, prompt in enumerate(prompts):
        for half, (name, images) in enumerate((("base", before), ("fine-tuned", after))):
            top = (row_index * 2 + half) * cell
            draw.text((6, top + cell // 2 - 16), f"{name}:\n{textwrap.fill(prompt, width=30)}", fill="black")
            for column, image in enumerate(images[row_index * seeds : (row_index + 1) * seeds]):
                grid.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (LABEL_WIDTH + column * cell, top))
    return grid


def draw_row(images: Sequence[Image.Image], cell: int) -> Image.Image:
    """One prompt's samples side by side, one per seed."""
    row = Image.new("RGB", (cell * len(images), cell), "white")
    for column, image in enumerate(images):
        row.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (column * cell, 0))
    return row


# SDXL's embedding file holds one tensor per encoder, each loaded with its tokenizer.
SDXL_EMBEDDINGS = (("clip_l", "text_encoder", "tokenizer"), ("clip_g", "text_encoder_2", "tokenizer_2"))


@contextlib.contextmanager
def loaded_concept(pipeline: StableDiffusionPipeline, folder: Path, token: str) -> Iterator[StableDiffusionPipeline]:
    """The pipeline with the folder's embedding and LoRA loaded by diffusers; on exit the LoRA is
    unloaded and each text encoder's embedding table is the one it had (the tokenizers are copies)."""
    sdxl = getattr(pipeline, "text_encoder_2", None) is not None
    names = [(encoder, tokenizer) for _, encoder, tokenizer in SDXL_EMBEDDINGS[: 2 if sdxl else 1]]
    saved = []
    for encoder_name, tokenizer_name in names:
        encoder = getattr(pipeline, encoder_name)
        table = encoder.get_input_embeddings()
        saved.append((encoder, table, table.weight.data, table.num_embeddings, encoder.config.vocab_size))
        setattr(pipeline, tokenizer_name, copy.deepcopy(getattr(pipeline, tokenizer_name)))
        # The new rows get the trained vectors: fitting a distribution to the whole table for their first
        # values (transformers' mean_resizing) would be wasted time.
        encoder.resize_token_embeddings = functools.partial(encoder.resize_token_embeddings, mean_resizing=False)
    has_lora = (folder / LORA_FILE).is_file()
    try:
        try:
            _load_embedding(pipeline, folder / EMBEDDING_FILE, token, sdxl=sdxl)
            if has_lora:
                pipeline.load_lora_weights(
                    str(folder), weight_name=LORA_FILE, adapter_name=ADAPTER_NAME, low_cpu_mem_usage=True
                )
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise PreviewError(f"the trained files did not load in diffusers: {error}") from error
        yield pipeline
    finally:
        if has_lora:
            pipeline.unload_lora_weights()
        for encoder, embeddings, weight, rows, vocab_size in saved:
            del encoder.resize_token_embeddings
            embeddings.weight.data, embeddings.num_embeddings = weight, rows
            encoder.config.vocab_size = vocab_size


def _load_embedding(pipeline: StableDiffusionPipeline, path: Path, token: str, *, sdxl: bool) -> None:
    """diffusers' load_textual_inversion: the file as is (SD), or its clip_l / clip_g tensors into each
    encoder (SDXL), as a user loads them."""
    if not sdxl:
        pipeline.load_textual_inversion(str(path), token=token)
        return
    tensors = load_file(str(path))
    for key, encoder, tokenizer in SDXL_EMBEDDINGS:
        pipeline.load_textual_inversion(
            tensors[key], token=token, text_encoder=getattr(pipeline, encoder), tokenizer=getattr(pipeline, tokenizer)
        )


def render_image_previews(
    base_model: str,
    folder: Path,
    *,
    token: str,
    prompts: Sequence[str],
    seeds: Sequence[int] = PREVIEW_SEEDS,
    steps: int = PREVIEW_STEPS,
    device: str | None = None,
    mixed_precision: str = "no",
    out_dir: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Previews:
    """Sample `prompts` x `seeds` from the base model and from the concept in `folder` (the files a
    training wrote); write the grid and one picture per prompt to out_dir (default: folder)."""
    started = time.perf_counter()
    out_dir = out_dir or folder
    torch_device = pick_device(device)
    base = load_base(base_model, torch_device, weight_dtype_for(mixed_precision, torch_device))
    pipeline = pipeline_for(base)
    before = sample_images(pipeline, prompts, seeds, steps=steps)
    if should_stop is not None and should_stop():
        raise TrainingCanceled("canceled while rendering previews")
    with loaded_concept(pipeline, folder, token):
        after = sample_images(pipeline, prompts, seeds, steps=steps)
    return _write(out_dir, base, list(prompts), before, after, list(seeds), steps, started)


def _write(
    out_dir: Path,
    base: BaseComponents,
    prompts: list[str],
    before: list[Image.Image],
    after: list[Image.Image],
    seeds: list[int],
    steps: int,
    started: float,
) -> Previews:
    """The grid and the per-prompt pictures as files and artifacts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cell = cell_size(base.resolution)
    draw_grid(prompts, before, after, cell).save(out_dir / GRID_FILE)
    artifacts = [artifact(out_dir / GRID_FILE, "preview_grid")]
    images = []
    for index, prompt in enumerate(prompts):
        name = prompt_file(index)
        draw_row(after[index * len(seeds) : (index + 1) * len(seeds)], cell).save(out_dir / name)
        artifacts.append(artifact(out_dir / name, "preview"))
        images.append({"prompt": prompt, "name": name})
    return Previews(
        seconds=time.perf_counter() - started,
        prompts=prompts,
        artifacts=artifacts,
        seeds=seeds,
        steps=steps,
        grid=GRID_FILE,
        images=images,
    )
