"""`leap train`: pivotal tuning on local files, no server involved.

Image base models train on a folder of images; text base models (registry kind `text`, e.g.
smollm2-135m) on a folder of .txt files or one .jsonl file (see models/text/).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from models.enums import Kind
from models.registry import Registry
from models.trainer.config import TrainConfig
from models.trainer.errors import TrainerError


def train_command(
    images_dir: Annotated[
        Path,
        typer.Argument(
            metavar="INPUTS",
            help="Image models: a folder of 2-50 images. Text models: a folder of 2-500 .txt files "
            '(one example each) or one .jsonl file of {"text"} or {"prompt", "completion"} lines.',
        ),
    ],
    base_model: Annotated[str, typer.Option(help="Registry id, diffusers folder or hub id.")] = "leap-tiny",
    out: Annotated[Path, typer.Option(help="Output folder for the artifacts.")] = Path("leap-out"),
    mode: Annotated[str, typer.Option(help="pivotal | textual_inversion | lora (text: pivotal | token | lora)")] = (
        "pivotal"
    ),
    init: Annotated[str, typer.Option(help="booster | token | random")] = "booster",
    name: Annotated[
        str | None,
        typer.Option(
            help="Names the A1111/ComfyUI files (NAME.safetensors, NAME_lora.safetensors) and, "
            "without --token, the token <NAME>."
        ),
    ] = None,
    token: Annotated[str | None, typer.Option(help="Placeholder token; default <NAME>, else <leap>.")] = None,
    initializer_token: Annotated[str | None, typer.Option(help="Word the token starts from (text default: thing)")] = (
        None
    ),
    preset: Annotated[
        str,
        typer.Option(
            "--preset", "--concept", help="object | person | style: the prompt templates of uncaptioned images"
        ),
    ] = "object",
    steps: Annotated[int | None, typer.Option(help="Run exactly this many steps (default: stop when done).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Without --steps: the cap (stop when done).")] = None,
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
    text_model: Annotated[
        bool | None,
        typer.Option(
            "--text-model/--image-model", help="What BASE_MODEL is when it is not a registry id (default: image)."
        ),
    ] = None,
    lora_targets: Annotated[str, typer.Option(help="Text: attention | attention+mlp")] = "attention",
    max_length: Annotated[int, typer.Option(help="Text: token limit per example")] = 256,
    data_dir: Annotated[
        Path | None, typer.Option(help="Text: where GGUF base models are converted to (default ~/.cache/leap)")
    ] = None,
    registry_file: Annotated[
        Path | None,
        typer.Option(
            "--registry",
            envvar="LEAP_MODEL_REGISTRY",
            help="The model registry YAML (default: the bundled models/registry.yaml).",
        ),
    ] = None,
) -> None:
    """Fine-tune a concept from INPUTS and write its artifacts and manifest to OUT."""
    from models.registry import load_registry

    registry = load_registry(registry_file)
    entry = registry.get(base_model)
    if (entry.kind == Kind.TEXT) if entry is not None else bool(text_model):
        _train_text(
            images_dir,
            base_model=base_model,
            out=out,
            mode=mode,
            init=init,
            token=token or (f"<{name}>" if name else "<leap>"),
            initializer_token=initializer_token,
            steps=steps,
            max_steps=max_steps,
            num_vectors=num_vectors,
            embedding_lr=embedding_lr,
            lora_lr=lora_lr,
            pivot_embedding_lr=pivot_embedding_lr,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_targets=lora_targets,
            batch_size=batch_size,
            max_length=max_length,
            seed=seed,
            device=device,
            data_dir=data_dir,
            registry=registry,
        )
        return
    from models.booster.resolver import registered_booster
    from models.trainer.images import decode_images, read_captions, read_image_dir
    from models.trainer.train import train

    # Without --name the token stays <leap>, as before names existed; the files are then leap*.safetensors.
    token = token or (f"<{name}>" if name else "<leap>")
    config = TrainConfig(
        base_model=base_model,
        name=name,
        token=token,
        mode=mode,  # type: ignore[arg-type]
        init=init,  # type: ignore[arg-type]
        initializer_token=initializer_token,
        preset=preset,  # type: ignore[arg-type]
        num_vectors=num_vectors,
        steps=steps,
        max_steps=max_steps,
        embedding_lr=embedding_lr,
        lora_lr=lora_lr,
        pivot_embedding_lr=pivot_embedding_lr,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        train_text_encoder_lora=train_text_encoder_lora,
        batch_size=batch_size,
        resolution=resolution,
        seed=seed,
        mixed_precision=mixed_precision,  # type: ignore[arg-type]
        gradient_checkpointing=gradient_checkpointing,
        device=device,
    )
    with _exit_on_trainer_error():
        config.validate()
        sources = read_image_dir(images_dir)
        images = decode_images(sources)
        bar, on_progress = _progress_bar()
        result = train(
            config,
            images,
            out,
            registry=registry,
            booster=registered_booster(registry),
            on_progress=on_progress,
            captions=read_captions(images_dir, sources),
        )
        bar.close()
    typer.echo(
        json.dumps(
            {
                "out_dir": str(result.out_dir),
                "init_used": result.init_used,
                "init_note": result.init_note,
                "init_scores": result.init_scores,
                "steps": result.steps,
                "stop_reason": result.stop_reason,
                "device": result.device,
                "files": [a.name for a in result.artifacts],
            },
            indent=2,
        )
    )


@contextlib.contextmanager
def _exit_on_trainer_error() -> Iterator[None]:
    """A TrainerError ends the command with exit code 2 and `error (code): message` on stderr."""
    try:
        yield
    except TrainerError as error:
        typer.echo(f"error ({error.code}): {error.message}", err=True)
        raise typer.Exit(code=2) from error


def _progress_bar():
    from tqdm import tqdm

    bar = tqdm(total=0, desc="training", unit="step")

    def on_progress(progress) -> None:
        bar.total = progress.total
        bar.update(progress.step - bar.n)
        bar.set_postfix(loss=f"{progress.loss:.4f}", eta=f"{progress.eta_s:.0f}s")

    return bar, on_progress


def _train_text(
    inputs: Path,
    *,
    base_model: str,
    out: Path,
    mode: str,
    init: str,
    token: str,
    initializer_token: str | None,
    steps: int | None,
    max_steps: int | None,
    num_vectors: int,
    embedding_lr: float | None,
    lora_lr: float | None,
    pivot_embedding_lr: float | None,
    lora_rank: int,
    lora_alpha: float | None,
    lora_targets: str,
    batch_size: int | None,
    max_length: int,
    seed: int,
    device: str | None,
    data_dir: Path | None,
    registry: Registry,
) -> None:
    from models.text.config import TextTrainConfig
    from models.text.examples import parse_text_files, read_text_path

    config = TextTrainConfig(
        base_model=base_model,
        mode=mode,  # type: ignore[arg-type]
        init=init,  # type: ignore[arg-type]
        token=token,
        initializer_token=initializer_token or "thing",
        num_vectors=num_vectors,
        steps=steps,
        max_steps=max_steps,
        embedding_lr=embedding_lr,
        lora_lr=lora_lr,
        pivot_embedding_lr=pivot_embedding_lr,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_targets=lora_targets,  # type: ignore[arg-type]
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        device=device,
        data_dir=str(data_dir) if data_dir else None,
    )
    with _exit_on_trainer_error():
        config.validate()
        examples = parse_text_files(read_text_path(inputs), token=token)
        from models.text.booster import text_booster_resolver
        from models.text.train import train as train_text

        bar, on_progress = _progress_bar()
        result = train_text(
            config,
            examples,
            out,
            registry=registry,
            booster_resolver=text_booster_resolver(registry),
            on_progress=on_progress,
        )
        bar.close()
    typer.echo(
        json.dumps(
            {
                "out_dir": str(result.out_dir),
                "kind": "text",
                "init_used": result.init_used,
                "init_note": result.init_note,
                "steps": result.steps,
                "stop_reason": result.stop_reason,
                "device": result.device,
                "loss": result.manifest["loss"],
                "files": [a.name for a in result.artifacts],
            },
            indent=2,
        )
    )


def main() -> None:
    typer.run(train_command)


if __name__ == "__main__":
    main()
