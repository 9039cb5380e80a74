"""The pivotal-tuning loop: textual inversion, LoRA, or both in two phases.

    registry = load_registry()
    result = train(TrainConfig(base_model="leap-tiny"), images, out_dir, registry=registry,
                   booster=registered_booster(registry), on_progress=print)

Phase 1 of `pivotal` trains only the token's vectors at a high learning rate; phase 2 adds
the LoRA and keeps moving the vectors at a lower rate (cloneofsimo/lora PTI, diffusers'
advanced_diffusion_training). The base pipeline is loaded once per process and shared.

With init=booster the start is guarded (models/trainer/guard.py): the token and the candidates of
the caller's `booster` resolver are scored on the job's evaluation views (held-back uploads, else the
trainer's augmentation of them) and a candidate starts only where it beats the token by more than the
scores' noise. A start the guard took from a booster warms up: its rates ramp up over `warmup_steps`
(Adam's first full-rate steps would throw a good start away). Without `steps` a run stops when done
(models/trainer/stopping.py, models/trainer/loop.py), at `max_steps` at the latest, and keeps its
best evaluated state.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from models.enums import Init, Mode
from models.registry import Registry
from models.trainer.base_model import BaseComponents, load_base, pick_device, weight_dtype_for
from models.trainer.captions import MAX_CAPTION_CHARS, caption_template
from models.trainer.concept import ConceptModel, InitialState
from models.trainer.config import Artifact, LoopResult, Progress, TrainConfig, TrainResult
from models.trainer.data import LatentSet, caption_templates, encode_images
from models.trainer.defaults import resolve_base_model, with_defaults
from models.trainer.errors import BaseModelError, InvalidImagesError, OutOfMemory
from models.trainer.export import BaseDescription, loss_summary, save_concept, unet_layers_per_block, write_manifest
from models.trainer.guard import (
    BoosterResolver,
    Candidate,
    Gain,
    candidates,
    describe_scores,
    guard_report,
    guarded_start,
    snapshot,
)
from models.trainer.images import MAX_IMAGES, MIN_IMAGES
from models.trainer.loop import Callbacks, Start, Steps, run_steps
from models.trainer.loss import denoising_loss
from models.trainer.sdxl import SDXLConcept, concept_model, save_sdxl_concept
from models.trainer.stopping import Plateau, SeededEval, split_for_eval

EvalHook = Callable[[int, "Job"], None]


@dataclass
class Job:
    """What a running job exposes to evaluation hooks."""

    base: BaseComponents
    concept: ConceptModel
    config: TrainConfig


@contextlib.contextmanager
def _attached(base: BaseComponents, config: TrainConfig) -> Iterator[ConceptModel]:
    concept = concept_model(base, token=config.token, num_vectors=config.num_vectors)
    try:
        if config.gradient_checkpointing:
            base.unet.enable_gradient_checkpointing()
            for encoder in base.text_encoders:
                encoder.gradient_checkpointing_enable()
        yield concept
    finally:
        concept.close()
        if config.gradient_checkpointing:
            base.unet.disable_gradient_checkpointing()
            for encoder in base.text_encoders:
                encoder.gradient_checkpointing_disable()


def prepare(config: TrainConfig, registry: Registry) -> tuple[TrainConfig, BaseComponents]:
    """Validate, fill defaults (the registry's, else the SD recipe) and load (or reuse) the base model."""
    config.validate()
    config = with_defaults(config, registry)
    config.validate()
    device = pick_device(config.device)
    source = resolve_base_model(config.base_model, registry)
    try:
        entry = registry.get(config.base_model)
        family = entry.family if entry else None
        base = load_base(source, device, weight_dtype_for(config.mixed_precision, device), family=family)
    except BaseModelError as error:
        # The message reaches API clients: it names the model as outputs do, not by its folder here.
        assert config.base_model_name is not None
        raise BaseModelError(error.message.replace(source, config.base_model_name)) from error
    return config, base


def train(
    config: TrainConfig,
    images: Sequence[Image.Image],
    out_dir: Path,
    *,
    registry: Registry,
    booster: BoosterResolver | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    initial_state: InitialState | None = None,
    eval_hook: EvalHook | None = None,
    eval_steps: Collection[int] = (),
    on_finish: Callable[[Job], None] | None = None,
    captions: Sequence[str | None] | None = None,
    on_start: Callable[[Start], None] | None = None,
) -> TrainResult:
    """Train one concept and write its artifacts to out_dir (`on_finish` sees the final state first).

    `captions` (one per image, None for none) replace the preset's prompt templates for their images;
    each places the token as models.trainer.data.caption_template says.

    `registry` names the base models and their defaults; `booster` gives init=booster its candidates
    (models.booster.resolver.registered_booster(registry)); without one the run starts from the token."""
    started = time.perf_counter()
    if not MIN_IMAGES <= len(images) <= MAX_IMAGES:
        raise InvalidImagesError(f"need {MIN_IMAGES}-{MAX_IMAGES} images, got {len(images)}")
    templates = image_templates(captions, len(images), config.token)
    config, base = prepare(config, registry)
    resolution = config.resolution or base.resolution
    assert (config.steps or config.max_steps) is not None and config.batch_size is not None
    callbacks = Callbacks(
        on_progress=on_progress,
        should_stop=should_stop,
        eval_hook=eval_hook,
        eval_steps=frozenset(eval_steps),
        on_finish=on_finish,
        on_start=on_start,
    )
    try:
        with _attached(base, config) as concept:
            return _run(
                config,
                base,
                concept,
                images,
                out_dir,
                resolution,
                started,
                captions=templates,
                initial_state=initial_state,
                booster=booster,
                callbacks=callbacks,
            )
    except torch.cuda.OutOfMemoryError as error:
        raise OutOfMemory(
            f"out of GPU memory at batch size {config.batch_size}, resolution {resolution}; "
            "try mixed precision or gradient checkpointing"
        ) from error


def image_templates(captions: Sequence[str | None] | None, count: int, token: str) -> list[str | None]:
    """Each image's prompt template from its caption (None: the preset's templates); a caption list
    that does not match the images, or a caption that is too long, is refused naming the image."""
    if captions is None:
        return [None] * count
    if len(captions) != count:
        raise InvalidImagesError(f"{len(captions)} captions for {count} images")
    for index, caption in enumerate(captions):
        if caption is not None and len(caption) > MAX_CAPTION_CHARS:
            raise InvalidImagesError(f"caption of image {index + 1} is over {MAX_CAPTION_CHARS} characters")
    return [caption_template(caption, token) if caption and caption.strip() else None for caption in captions]


HELD_BACK, AUGMENTED = "held_back", "augmented_views"


class _Evaluation:
    """The job's fixed, seeded evaluation, built on first use (the guard or automatic stopping): its
    held-back uploads, or (`augment`) the trainer's augmentation of uploads too few to hold any back."""

    def __init__(
        self,
        base: BaseComponents,
        images: Sequence[Image.Image],
        resolution: int,
        prompt: str,
        seed: int,
        *,
        augment: bool,
        flip: bool,
    ) -> None:
        self.args = (base, images, resolution, prompt, seed)
        self.augment, self.flip = augment, flip
        self._eval: SeededEval | None = None

    def _built(self) -> SeededEval:
        if self._eval is None:
            base, images, resolution, prompt, seed = self.args
            self._eval = SeededEval(
                base, images, resolution=resolution, prompt=prompt, seed=seed, augment=self.augment, flip=self.flip
            )
        return self._eval

    @property
    def views(self) -> str:
        return AUGMENTED if self.augment else HELD_BACK

    @property
    def rows(self) -> int:
        return self._built().rows

    def per_row(self, concept: ConceptModel) -> torch.Tensor:
        return self._built().per_row(concept)

    def __call__(self, concept: ConceptModel) -> float:
        return self._built()(concept)


@dataclass(frozen=True)
class _Prompts:
    """The prompt templates of the training images: an image's caption, else one of the preset's."""

    templates: tuple[str, ...]
    captions: list[str | None]
    """Per training image (in the latents' order): its caption as a template, or None."""

    def template(self, image: int, choice: int) -> str:
        """The template for `image`; `choice` picks among the preset's (drawn for every image, so a
        run draws the same numbers with or without captions)."""
        return self.captions[image] or self.templates[choice]


@dataclass
class _Start:
    used: str
    """booster | token | random | state"""
    note: str = ""
    scores: dict[str, float] | None = None
    winner: str | None = None
    guard: dict[str, Any] | None = None
    """The manifest's `init_guard` (guard.guard_report)."""


def _initialise(
    config: TrainConfig,
    base: BaseComponents,
    concept: ConceptModel,
    images: Sequence[Image.Image],
    initial_state: InitialState | None,
    booster: BoosterResolver | None,
    generator: torch.Generator,
    evaluate: _Evaluation,
) -> _Start:
    """Set the starting point: the given state, random, the token, or the guard's best candidate
    (`images`: what the booster may read, never the held-back views the guard scores on)."""
    if initial_state is not None:
        concept.init_from_state(initial_state)
        return _Start("state", initial_state.note)
    if config.init == Init.RANDOM:
        concept.init_random(generator)
        return _Start("random")
    assert config.initializer_token is not None
    concept.init_from_token(_initializer(config, concept))
    if config.init != Init.BOOSTER:
        return _Start("token")
    resolved = booster(base, images, config) if booster else None
    if resolved is None:
        return _Start("token", "no booster is registered for this base model; started from the initializer token")
    states = [resolved] if isinstance(resolved, InitialState) else list(resolved)
    found = candidates(concept.embedding.detach().clone(), states, has_lora=bool(concept.unet_lora))
    winner, scores, gains = guarded_start(concept, found, evaluate.per_row)
    guard = guard_report(winner.name, gains, views=evaluate.views, rows=evaluate.rows)
    return _Start(_used(winner), _note(winner, scores, gains, evaluate.views), scores, winner.name, guard)


def _initializer(config: TrainConfig, concept: ConceptModel) -> str:
    """The initializer word; the person preset's default word falls back to "object" in a vocabulary
    where "person" is not one token (leap-tiny's)."""
    assert config.initializer_token is not None
    word = config.initializer_token
    single = len(concept.tokenizer(word, add_special_tokens=False).input_ids) == 1
    return "object" if config.preset == "person" and word == "person" and not single else word


def _used(winner: Candidate) -> str:
    return "token" if winner.name == "token" else "booster"


def _note(winner: Candidate, scores: dict[str, float], gains: dict[str, Gain], views: str) -> str:
    described = {HELD_BACK: "held-back uploads", AUGMENTED: "augmented views of the uploads"}[views]
    note = describe_scores(winner.name, scores, gains, views=described)
    return f"{note}; {winner.state.note}" if winner.name != "token" and winner.state.note else note


def _run(
    config: TrainConfig,
    base: BaseComponents,
    concept: ConceptModel,
    images: Sequence[Image.Image],
    out_dir: Path,
    resolution: int,
    started: float,
    *,
    captions: list[str | None],
    initial_state: InitialState | None,
    booster: BoosterResolver | None,
    callbacks: Callbacks[Job],
) -> TrainResult:
    auto = config.steps is None
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    trains_lora = _set_up_lora(config, concept)
    templates = caption_templates(config.preset)
    # One evaluation for the guard and the stopping rule: held-back uploads where there are enough,
    # which the booster never reads; a fixed step count still trains on every upload.
    pairs = list(zip(images, captions, strict=True))
    kept_pairs, eval_pairs, eval_source = split_for_eval(pairs, fallback=AUGMENTED)
    train_pairs = kept_pairs if auto else pairs
    train_images, train_captions = [image for image, _ in train_pairs], [caption for _, caption in train_pairs]
    eval_images = [image for image, _ in eval_pairs]
    evaluate = _Evaluation(
        base, eval_images, resolution, templates[0], config.seed, augment=eval_source == AUGMENTED, flip=config.flip
    )
    booster_images = [image for image, _ in kept_pairs]
    start = _initialise(config, base, concept, booster_images, initial_state, booster, generator, evaluate)
    callbacks.started(Start(start.used, start.note, dict(start.scores) if start.scores else None))
    latents = encode_images(base, train_images, resolution=resolution, flip=config.flip)
    optimizer, lora_parameters = _optimizer(config, concept, trains_lora)
    plateau = _plateau(config, concept, start, evaluate) if auto else None
    steps = _steps(
        config,
        base,
        concept,
        latents,
        _Prompts(templates, train_captions),
        generator,
        optimizer,
        lora_parameters,
        trains_lora=trains_lora,
        evaluate=evaluate,
        warmup=_warmup(config, start),
    )
    loop = run_steps(steps, callbacks, config, plateau=plateau)
    if callbacks.on_finish is not None:
        callbacks.on_finish(Job(base, concept, config))

    artifacts = _save(out_dir, config, base, concept, resolution)
    compute_seconds = time.perf_counter() - started
    stopping = None
    if plateau is not None:
        stopping = plateau.report(
            evaluated_on=eval_source, eval_images=len(eval_images), training_images=len(train_images)
        )
    manifest = _manifest(
        config,
        base,
        concept,
        start,
        loop,
        stopping=stopping,
        trains_lora=trains_lora,
        resolution=resolution,
        num_images=len(images),
        num_captions=sum(caption is not None for caption in captions),
        compute_seconds=compute_seconds,
    )
    artifacts.append(write_manifest(out_dir, manifest, artifacts))
    return TrainResult(
        out_dir=out_dir,
        artifacts=artifacts,
        manifest=manifest,
        steps=loop.done,
        init_used=start.used,
        init_note=start.note,
        device=str(base.device),
        compute_seconds=compute_seconds,
        losses=loop.losses,
        init_scores=dict(start.scores or {}),
        stop_reason=loop.stop_reason,
        eval_curve=plateau.curve if plateau else [],
    )


def _set_up_lora(config: TrainConfig, concept: ConceptModel) -> bool:
    """Add the job's LoRA where its mode trains one; whether it does."""
    trains_lora = config.mode in (Mode.LORA, Mode.PIVOTAL)
    if trains_lora:
        concept.add_lora(
            rank=config.lora_rank,
            alpha=float(config.lora_alpha or config.lora_rank),
            text_encoder=config.train_text_encoder_lora,
        )
    return trains_lora


def _optimizer(
    config: TrainConfig, concept: ConceptModel, trains_lora: bool
) -> tuple[torch.optim.AdamW, list[torch.nn.Parameter]]:
    """AdamW over the token's vectors (group 0) and, where trained, the LoRA (group 1)."""
    lora_parameters = concept.lora_parameters()
    groups = [{"params": [concept.embedding], "lr": config.embedding_lr or 0.0, "weight_decay": 0.0}]
    if trains_lora:
        groups.append({"params": lora_parameters, "lr": config.lora_lr or 0.0, "weight_decay": 1e-4})
    optimizer = torch.optim.AdamW(groups)
    concept.embedding.requires_grad_(config.mode != Mode.LORA)
    return optimizer, lora_parameters


def _plateau(config: TrainConfig, concept: ConceptModel, start: _Start, evaluate: _Evaluation) -> Plateau[InitialState]:
    """The stopping rule's tracker, from the start's score (the guard's, where it scored one); a start
    the guard took from the booster is probed (StopRule.probe_steps)."""
    first = start.scores[start.winner] if start.scores and start.winner else round(evaluate(concept), 6)
    return Plateau(config.stopping, first, snapshot(concept), probe=start.used == "booster")


@dataclass(frozen=True)
class _Warmup:
    """Which parameter groups ramp up their rate, over how many of their own steps."""

    steps: int
    embedding: bool
    lora: bool

    def scale(self, done: int) -> float:
        """The share of the rate at a group's `done`-th step (1-based)."""
        return min(1.0, done / self.steps) if self.steps > 0 else 1.0


def _warmup(config: TrainConfig, start: _Start) -> _Warmup:
    """A start the guard took from a booster ramps up its predicted parts: the vectors, and the LoRA
    where the start predicted one (a fresh LoRA starts at zero, where full-rate steps are safe)."""
    predicted = start.used == "booster"
    predicted_lora = predicted and start.winner is not None and start.winner.endswith("+lora")
    return _Warmup(config.warmup_steps, embedding=predicted, lora=predicted_lora)


def _steps(
    config: TrainConfig,
    base: BaseComponents,
    concept: ConceptModel,
    latents: LatentSet,
    prompts: _Prompts,
    generator: torch.Generator,
    optimizer: torch.optim.AdamW,
    lora_parameters: list[torch.nn.Parameter],
    *,
    trains_lora: bool,
    evaluate: _Evaluation,
    warmup: _Warmup,
) -> Steps[Job, InitialState]:
    """The image trainer's side of the shared step loop (models/trainer/loop.py)."""
    autocast = (
        torch.autocast(base.device.type, dtype=base.weight_dtype)
        if base.weight_dtype != torch.float32
        else contextlib.nullcontext()
    )

    taken = {"embedding": 0, "lora": 0}  # each group's steps so far, for the warm-up

    def step() -> float:
        loss = _step(base, concept, latents, prompts, config, generator, autocast)
        rates = [group["lr"] for group in optimizer.param_groups]
        taken["embedding"] += 1
        if warmup.embedding:
            optimizer.param_groups[0]["lr"] *= warmup.scale(taken["embedding"])
        if trains_lora and lora_parameters and lora_parameters[0].requires_grad:
            taken["lora"] += 1
            if warmup.lora:
                optimizer.param_groups[1]["lr"] *= warmup.scale(taken["lora"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for group, rate in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        return loss

    def set_phase(in_pivot_phase: bool) -> None:
        _set_phase(optimizer, lora_parameters, config, in_pivot_phase=in_pivot_phase, trains_lora=trains_lora)

    return Steps(
        step=step,
        set_phase=set_phase,
        job=lambda: Job(base, concept, config),
        evaluate=lambda: evaluate(concept),
        snapshot=lambda: snapshot(concept),
        restore=concept.init_from_state,
    )


def _set_phase(
    optimizer: torch.optim.AdamW,
    lora_parameters: list[torch.nn.Parameter],
    config: TrainConfig,
    *,
    in_pivot_phase: bool,
    trains_lora: bool,
) -> None:
    """pivotal phase 1 trains the vectors alone at embedding_lr; phase 2 adds LoRA at pivot_embedding_lr."""
    for parameter in lora_parameters:
        parameter.requires_grad_(trains_lora and not in_pivot_phase)
    if config.mode == Mode.PIVOTAL:
        rate = config.embedding_lr if in_pivot_phase else config.pivot_embedding_lr
        optimizer.param_groups[0]["lr"] = rate or 0.0


def _save(
    out_dir: Path, config: TrainConfig, base: BaseComponents, concept: ConceptModel, resolution: int
) -> list[Artifact]:
    """The concept's diffusers and A1111/ComfyUI files."""
    assert config.base_model_name is not None and config.lora_alpha is not None
    if isinstance(concept, SDXLConcept):
        return save_sdxl_concept(
            out_dir,
            concept,
            name=config.output_name,
            base_name=config.base_model_name,
            lora_alpha=config.lora_alpha,
            rank=config.lora_rank,
            resolution=resolution,
        )
    unet_lora, te_lora = concept.lora_state()
    described = BaseDescription(
        name=config.base_model_name,
        text_width=base.embedding_width,
        prediction_type=base.noise_scheduler.config.prediction_type,
        resolution=resolution,
        layers_per_block=unet_layers_per_block(base.unet.config),
    )
    return save_concept(
        out_dir,
        name=config.output_name,
        token=config.token,
        embedding=concept.embedding,
        unet_lora=unet_lora,
        text_encoder_lora=te_lora,
        lora_alpha=config.lora_alpha,
        rank=config.lora_rank,
        base=described,
    )


def _manifest(
    config: TrainConfig,
    base: BaseComponents,
    concept: ConceptModel,
    start: _Start,
    loop: LoopResult,
    *,
    stopping: dict[str, Any] | None,
    trains_lora: bool,
    resolution: int,
    num_images: int,
    num_captions: int,
    compute_seconds: float,
) -> dict[str, Any]:
    """manifest.json's content (plain strings and numbers only)."""
    return {
        "base_model": config.base_model_name,
        "name": config.output_name,
        "token": config.token,
        "tokens": concept.tokens,
        "mode": str(config.mode),
        "init": str(config.init),
        "init_used": start.used,
        "init_note": start.note,
        "init_scores": start.scores,
        "init_guard": start.guard,
        "steps": loop.done,
        "max_steps": config.max_steps,
        "stop_reason": loop.stop_reason,
        "stopping": stopping,
        "pivot_step": loop.pivot_step,
        "seed": config.seed,
        "learning_rates": {
            "embedding": config.embedding_lr,
            "pivot_embedding": config.pivot_embedding_lr,
            "lora": config.lora_lr,
        },
        "warmup_steps": config.warmup_steps if start.used == "booster" else 0,
        "lora_rank": config.lora_rank if trains_lora else None,
        "lora_alpha": config.lora_alpha if trains_lora else None,
        "resolution": resolution,
        "num_images": num_images,
        "num_captions": num_captions,
        "preset": config.preset,
        "batch_size": config.batch_size,
        "train_text_encoder_lora": config.train_text_encoder_lora if trains_lora else None,
        "device": str(base.device),
        # The server's folder of the model stays on the server (base_model_name names it).
        "config": {**config.to_dict(), "base_model": config.base_model_name},
        "timings": {
            "total_seconds": round(compute_seconds, 3),
            "train_seconds": round(loop.train_seconds, 3),
            "steps_per_second": round(loop.done / max(loop.train_seconds, 1e-9), 3),
        },
        "loss": loss_summary(loop.losses),
    }


def _step(
    base: BaseComponents,
    concept: ConceptModel,
    latents: LatentSet,
    prompts: _Prompts,
    config: TrainConfig,
    generator: torch.Generator,
    autocast,
) -> float:
    assert config.batch_size is not None
    index = torch.randint(0, len(latents), (config.batch_size,), generator=generator)
    flip = torch.rand(config.batch_size, generator=generator) < 0.5
    drawn = torch.randint(0, len(prompts.templates), (config.batch_size,), generator=generator)
    texts = [
        concept.prompt(prompts.template(int(image), int(choice))) for image, choice in zip(index, drawn, strict=True)
    ]
    sample = latents.sample(index, flip, generator).to(base.device)
    noise = torch.randn(sample.shape, generator=generator).to(base.device)
    timesteps = torch.randint(
        0, base.noise_scheduler.config.num_train_timesteps, (config.batch_size,), generator=generator
    ).to(base.device)
    with autocast:
        loss = denoising_loss(base, concept, sample, texts, noise, timesteps)
    loss.backward()
    return float(loss.detach())
