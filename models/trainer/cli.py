"""`leap train`: pivotal tuning on a local folder of images, no server involved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from models.trainer.config import TrainConfig
from models.trainer.errors import TrainerError


def train_command(
    images_dir: Annotated[Path, typer.Argument(help="Folder of 2-50 images of the concept.")],
    base_model: Annotated[str, typer.Option(help="Registry id, diffusers folder or hub id.")] = "leap-tiny",
    out: Annotated[Path, typer.Option(help="Output folder for the artifacts.")] = Path("leap-out"),
    mode: Annotated[str, typer.Option(help="pivotal | textual_inversion | lora")] = "pivotal",
    init: Annotated[str, typer.Option(help="booster | token | random")] = "booster",
    name: Annotated[str | None, typer.Option(
        help="Names the A1111/ComfyUI files (NAME.safetensors, NAME_lora.safetensors) and, "
             "without --token, the token <NAME>.")] = None,
    token: Annotated[str | None, typer.Option(help="Placeholder token; default <NAME>, else <leap>.")] = None,
    initializer_token: str | None = None,
    concept: Annotated[str, typer.Option(help="object | style (caption templates)")] = "object",
    steps: int | None = None,
    num_vectors: int = 1,
    embedding_lr: float | None = None,
    lora_lr: float | None = None,
    pivot_embedding_lr: float | None = None,
    lora_rank: int = 4,
    lora_alpha: Annotated[float | None, typer.Option(help="LoRA scale is alpha / rank; default: the rank.")] = None,
    train_text_encoder_lora: bool = False,
    batch_size: int | None = None,
    resolution: int | None = None,
    seed: int = 0,
    mixed_precision: Annotated[str, typer.Option(help="no | fp16 | bf16")] = "no",
    gradient_checkpointing: bool = False,
    device: str | None = None,
) -> None:
    """Fine-tune a concept from IMAGES_DIR; write the diffusers files, the A1111/ComfyUI files and a manifest."""
    from tqdm import tqdm

    from models.trainer.images import decode_images, read_image_dir
    from models.trainer.train import train

    # Without --name the token stays <leap>, as before names existed; the files are then leap*.safetensors.
    token = token or (f"<{name}>" if name else "<leap>")
    config = TrainConfig(
        base_model=base_model, name=name, token=token, mode=mode, init=init, initializer_token=initializer_token,  # type: ignore[arg-type]
        concept=concept, num_vectors=num_vectors, steps=steps, embedding_lr=embedding_lr,  # type: ignore[arg-type]
        lora_lr=lora_lr, pivot_embedding_lr=pivot_embedding_lr, lora_rank=lora_rank, lora_alpha=lora_alpha,
        train_text_encoder_lora=train_text_encoder_lora, batch_size=batch_size, resolution=resolution, seed=seed,
        mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing, device=device,  # type: ignore[arg-type]
    )
    try:
        config.validate()
        images = decode_images(read_image_dir(images_dir))
        bar = tqdm(total=0, desc="training", unit="step")

        def on_progress(progress) -> None:
            bar.total = progress.total
            bar.update(progress.step - bar.n)
            bar.set_postfix(loss=f"{progress.loss:.4f}", eta=f"{progress.eta_s:.0f}s")

        result = train(config, images, out, on_progress=on_progress)
        bar.close()
    except TrainerError as error:
        typer.echo(f"error ({error.code}): {error.message}", err=True)
        raise typer.Exit(code=2) from error
    typer.echo(json.dumps({"out_dir": str(result.out_dir), "init_used": result.init_used, "init_note": result.init_note,
                           "steps": result.steps, "device": result.device,
                           "files": [a.name for a in result.artifacts]}, indent=2))


def main() -> None:
    typer.run(train_command)


if __name__ == "__main__":
    main()
