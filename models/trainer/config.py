"""The trainer's typed configuration and result (torch-free, so the API can validate with it)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from models.enums import IMAGE_MODES, INITS, Init, Mode, StopReason
from models.trainer.errors import InvalidConfigError

MODES = IMAGE_MODES
Preset = Literal["object", "person", "style"]
PRESETS: tuple[str, ...] = ("object", "person", "style")
Precision = Literal["no", "fp16", "bf16"]

TOKEN_PATTERN = re.compile(r"^<[A-Za-z0-9_\-]{1,32}>$")
# A file name on every OS and one word in a prompt (ComfyUI's `embedding:<name>` ends at a space).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{1,32}$")
# <name>.safetensors must not replace the diffusers files beside it (case-insensitive file systems too).
RESERVED_NAMES = ("learned_embeds", "pytorch_lora_weights")


@dataclass(frozen=True)
class StopRule:
    """When a job without `steps` stops (models/trainer/stopping.py): evaluate every `eval_every`
    steps; stop once the last `patience` evaluations improve on the best before them by no more
    than `min_delta` (relative), but not before `min_steps` (counted per pivotal phase).

    `probe_steps` > 0 probes a start the guard took from a prediction (the booster's) instead: one
    evaluation after that many steps; if it is no better than the start by `min_delta`, the first
    phase is done. Off by default (0): a good start's first steps gain little before they gain more,
    so the probe ended booster jobs worse than token jobs; a predicted start warms up
    (TrainConfig.warmup_steps) and then stops by the same rule as a token start."""

    eval_every: int = 5
    patience: int = 3
    min_delta: float = 0.005
    min_steps: int = 10
    probe_steps: int = 0


def check_mode_init_token(mode: str, modes: tuple[Mode, ...], init: str, inits: tuple[Init, ...], token: str) -> None:
    """The checks every trainer config starts with (image and text): mode, init and token spelling."""
    # str(): a member's repr would show the enum class; messages show the value.
    if mode not in modes:
        raise InvalidConfigError("mode", f"must be one of {', '.join(modes)}, got {str(mode)!r}")
    if init not in inits:
        raise InvalidConfigError("init", f"must be one of {', '.join(inits)}, got {str(init)!r}")
    if not TOKEN_PATTERN.match(token):
        raise InvalidConfigError("token", "must look like <name>: 1-32 letters, digits, _ or - in <>")


def check_steps_and_rule(steps: int | None, max_steps: int | None, rule: StopRule) -> None:
    """Every trainer's step options: `steps` (exactly that many) or `max_steps` (stop when done, at
    most that many), not both, and a sane stopping rule."""
    if steps is not None and not 1 <= steps <= 20_000:
        raise InvalidConfigError("steps", "must be between 1 and 20000")
    if max_steps is not None and not 1 <= max_steps <= 20_000:
        raise InvalidConfigError("max_steps", "must be between 1 and 20000")
    if steps is not None and max_steps is not None:
        raise InvalidConfigError(
            "max_steps", "give steps (exactly that many) or max_steps (stop when done, at most that many), not both"
        )
    if (
        rule.eval_every < 1
        or rule.patience < 1
        or rule.min_steps < 0
        or rule.probe_steps < 0
        or not 0.0 <= rule.min_delta < 1.0
    ):
        raise InvalidConfigError(
            "stopping", "eval_every and patience >= 1, min_steps and probe_steps >= 0, min_delta in [0, 1)"
        )


class Tunable(Protocol):
    """What every trainer config has in common: steps, pivotal phases, learning rates and LoRA shape."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    num_vectors: int
    steps: int | None
    max_steps: int | None
    stopping: StopRule
    pivot_fraction: float
    embedding_lr: float | None
    lora_lr: float | None
    pivot_embedding_lr: float | None
    lora_rank: int
    lora_alpha: float | None


def check_tuning(config: Tunable, *, max_rank: int) -> None:
    """Every trainer's numeric options (image and text), in this order: vectors, steps and stopping rule,
    pivot fraction, learning rates, LoRA rank (at most `max_rank`) and alpha."""
    if not 1 <= config.num_vectors <= 16:
        raise InvalidConfigError("num_vectors", "must be between 1 and 16")
    check_steps_and_rule(config.steps, config.max_steps, config.stopping)
    if not 0.0 < config.pivot_fraction < 1.0:
        raise InvalidConfigError("pivot_fraction", "must be between 0 and 1 (exclusive)")
    for name in ("embedding_lr", "lora_lr", "pivot_embedding_lr"):
        value = getattr(config, name)
        if value is not None and not 0.0 < value <= 1.0:
            raise InvalidConfigError(name, "must be in (0, 1]")
    if not 1 <= config.lora_rank <= max_rank:
        raise InvalidConfigError("lora_rank", f"must be between 1 and {max_rank}")
    if config.lora_alpha is not None and not 0.0 < config.lora_alpha <= 1024.0:
        raise InvalidConfigError("lora_alpha", "must be in (0, 1024]")


def plain(values: dict[str, Any]) -> dict[str, Any]:
    """A config's dict with enum members as their plain values (for YAML, safetensors metadata, JSON)."""
    return {key: value.value if isinstance(value, Enum) else value for key, value in values.items()}


@dataclass
class TrainConfig:
    """Everything that decides a training run; None means "the base model's default"."""

    base_model: str
    """Diffusers folder or hub id of an SD 1.x/2.x pipeline."""
    base_model_name: str | None = None
    """What the manifest and the webui metadata call the base model. Default: the registry id
    when base_model is one, else a local folder's name (never its path), else the hub id."""
    token: str = "<leap>"
    """Placeholder token added to the tokenizer, e.g. "<leap>"."""
    name: str | None = None
    """Names the A1111/ComfyUI files (<name>.safetensors, <name>_lora.safetensors); default: the
    token without its brackets."""
    mode: Mode = Mode.PIVOTAL
    init: Init = Init.BOOSTER
    """booster: the booster registered for base_model (falls back to token); token: copy
    initializer_token's embedding (diffusers' default); random: small random vectors."""
    initializer_token: str | None = None
    """Word whose embedding starts the new token; default "object", "person" or "style" by preset."""
    preset: Preset = "object"
    """What the images show, which picks the prompt templates of uncaptioned images: object ("a photo
    of a <token>"), person ("a portrait of <token>") or style ("a painting in the style of <token>")."""
    num_vectors: int = 1
    steps: int | None = None
    """Run exactly this many optimisation steps (pivotal: both phases together). Unset: stop when done."""
    max_steps: int | None = None
    """Without `steps`: the cap on a run that stops when its loss on a fixed evaluation of its own
    images stops improving (pivotal: phase 1 ends at convergence or at pivot_fraction of the cap)."""
    stopping: StopRule = field(default_factory=StopRule)
    pivot_fraction: float = 0.5
    """pivotal: the share of steps spent on the embedding alone before LoRA joins (with max_steps:
    the cap on that share; the phase ends earlier when it converges)."""
    embedding_lr: float | None = None
    lora_lr: float | None = None
    pivot_embedding_lr: float | None = None
    """pivotal phase 2: the embedding's (lower) learning rate while LoRA trains."""
    lora_rank: int = 4
    lora_alpha: float | None = None
    """Default: equal to lora_rank (scale 1)."""
    train_text_encoder_lora: bool = False
    batch_size: int | None = None
    resolution: int | None = None
    """Default: the UNet's sample size times the VAE scale factor."""
    flip: bool = True
    seed: int = 0
    mixed_precision: Precision = "no"
    gradient_checkpointing: bool = False
    device: str | None = None
    """cuda / mps / cpu; None picks the best available."""
    progress_every: int = 1
    warmup_steps: int = 5
    """A start the guard took from a booster: its predicted parts (vectors, a predicted LoRA) train at
    i/warmup_steps of their rate in their first steps (0: full rate at once). Adam's first steps move
    every coordinate by about the full rate, which throws a good start away; token and random starts
    always run at full rate."""

    def validate(self) -> None:
        """Raise InvalidConfigError naming the first bad field."""
        check_mode_init_token(self.mode, IMAGE_MODES, self.init, INITS, self.token)
        if self.name is not None and not NAME_PATTERN.match(self.name):
            raise InvalidConfigError("name", "must be 1-32 letters, digits, _ or -")
        if self.output_name.lower() in RESERVED_NAMES:
            field_name = "name" if self.name is not None else "token"
            raise InvalidConfigError(field_name, f"{self.output_name!r} would name a file like diffusers' own files")
        if self.preset not in PRESETS:
            raise InvalidConfigError("preset", f"must be one of {', '.join(PRESETS)}, got {str(self.preset)!r}")
        check_tuning(self, max_rank=128)
        if self.batch_size is not None and not 1 <= self.batch_size <= 64:
            raise InvalidConfigError("batch_size", "must be between 1 and 64")
        if self.resolution is not None and (self.resolution % 8 or not 16 <= self.resolution <= 2048):
            raise InvalidConfigError("resolution", "must be a multiple of 8 between 16 and 2048")
        if self.progress_every < 1:
            raise InvalidConfigError("progress_every", "must be at least 1")
        if not 0 <= self.warmup_steps <= 1000:
            raise InvalidConfigError("warmup_steps", "must be between 0 and 1000")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise InvalidConfigError("mixed_precision", "must be no, fp16 or bf16")

    @property
    def output_name(self) -> str:
        """The A1111/ComfyUI file name stem: name, else the token's text."""
        return self.name or self.token[1:-1]

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))


@dataclass(frozen=True)
class Progress:
    """What the callback receives every `progress_every` steps."""

    step: int
    total: int
    loss: float
    eta_s: float


@dataclass(frozen=True)
class Artifact:
    """One output file of a run."""

    name: str
    kind: str  # "embedding" | "lora" | "webui" (kohya LoRA) | "webui_embedding" | "manifest"
    path: Path
    bytes: int
    sha256: str


@dataclass
class LoopResult:
    """What a trainer's step loop did (image and text)."""

    done: int
    """Steps run."""
    losses: list[float]
    stop_reason: str
    pivot_step: int
    """pivotal: the step LoRA joined at (0 for the other modes)."""
    train_seconds: float


@dataclass
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    artifacts: list[Artifact]
    manifest: dict[str, Any]
    steps: int
    """Steps actually run."""
    init_used: str
    """booster | token | random | state: what the run actually started from."""
    device: str
    compute_seconds: float
    losses: list[float] = field(default_factory=list)
    init_note: str = ""
    """Why init_used differs from the request, or what part of a booster's prediction was used."""
    init_scores: dict[str, float] = field(default_factory=dict)
    """The guard's score (loss on the job's fixed evaluation) of each candidate start; lowest won."""
    stop_reason: str = StopReason.STEPS.value
    """converged | max_steps | steps (an explicit step count ran out)."""
    eval_curve: list[tuple[int, float]] = field(default_factory=list)
    """(step, loss on the fixed evaluation) of a run that stops when done; empty with explicit steps."""
