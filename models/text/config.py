"""The text trainer's typed configuration and defaults (torch-free, so the API can validate with it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from models.enums import INITS, TEXT_MODES, Init, Kind, Mode
from models.registry import Registry
from models.trainer.config import StopRule, check_mode_init_token, check_tuning, plain
from models.trainer.defaults import fill_unset, registered_defaults
from models.trainer.errors import InvalidConfigError

LoraTargets = Literal["attention", "attention+mlp"]

MODES = TEXT_MODES
LORA_TARGETS: tuple[str, ...] = ("attention", "attention+mlp")

# Used when the registry has no `defaults` for the model (e.g. a folder or hub id passed directly).
# Measured on SmolLM2-135M: the token alone needs a high rate (Adam moves each coordinate by ~lr
# per step, the embeddings' coordinates are ~0.1), LoRA converges in ~100 steps at 1e-3. The step
# counts are caps (`max_steps`), about twice that: a default job stops when done (TEXT_STOP_RULE).
TEXT_RECIPE: dict[str, dict[str, Any]] = {
    "token": {"max_steps": 200, "embedding_lr": 1e-2, "batch_size": 4},
    "lora": {"max_steps": 200, "lora_lr": 1e-3, "batch_size": 4},
    "pivotal": {"max_steps": 300, "embedding_lr": 1e-2, "pivot_embedding_lr": 1e-3, "lora_lr": 1e-3, "batch_size": 4},
}

# No probe: the text booster starts from a retrieved word, which still needs training (README).
TEXT_STOP_RULE = StopRule(eval_every=10, patience=3, min_delta=0.005, min_steps=20, probe_steps=0)
"""The text trainer's plateau rule (models/trainer/stopping.py): an evaluation of up to 16 examples
costs a few training steps, so it runs every 10 steps; a phase stops after 30 steps without a 0.5%
improvement, and not before 20 steps."""


@dataclass
class TextTrainConfig:
    """Everything that decides a text training run; None means "the base model's default"."""

    base_model: str
    """Registry id (e.g. smollm2-135m), transformers causal-LM folder or hub id."""
    mode: Mode = Mode.PIVOTAL
    init: Init = Init.BOOSTER
    """booster: the text booster registered for base_model, behind the guarded start (without one: token);
    token: copy initializer_token's embedding; random: small random vectors."""
    token: str = "<leap>"
    """The concept's token as written in the examples; added to the tokenizer."""
    initializer_token: str = "thing"
    """A word whose (first sub-word's) embedding starts the new token."""
    num_vectors: int = 1
    """>1: the token stands for <leap> <leap>_1 ... (one learned vector each)."""
    steps: int | None = None
    """Run exactly this many optimisation steps (pivotal: both phases together). Unset: stop when done."""
    max_steps: int | None = None
    """Without `steps`: the cap on a run that stops when its loss on a fixed evaluation of its own
    examples stops improving (held-back examples from 10 on; pivotal: the token phase ends at its own
    plateau or at pivot_fraction of the cap, then the LoRA phase runs to its plateau or the cap)."""
    stopping: StopRule = field(default_factory=lambda: TEXT_STOP_RULE)
    embedding_lr: float | None = None
    lora_lr: float | None = None
    pivot_embedding_lr: float | None = None
    """pivotal phase 2: the embedding's (lower) learning rate while LoRA trains."""
    pivot_fraction: float = 0.5
    """pivotal: the share of steps spent on the token alone before LoRA joins (with max_steps: the cap
    on that share; the phase ends earlier when it converges)."""
    lora_rank: int = 8
    lora_alpha: float | None = None
    """Default: equal to lora_rank (scale 1)."""
    lora_targets: LoraTargets = "attention"
    """attention: q/k/v/o projections; attention+mlp: also gate/up/down."""
    batch_size: int | None = None
    max_length: int = 256
    """Token limit per example (after the concept token is added); longer examples are refused."""
    seed: int = 0
    device: str | None = None
    """cuda / mps / cpu; None picks the best available."""
    data_dir: str | None = None
    """Where GGUF-shipped base models are converted to (once): <data_dir>/base-models/<id>."""
    progress_every: int = 1

    def validate(self) -> None:
        """Raise InvalidConfigError naming the first bad field."""
        check_mode_init_token(self.mode, TEXT_MODES, self.init, INITS, self.token)
        if not self.initializer_token or not self.initializer_token.strip() or len(self.initializer_token) > 64:
            raise InvalidConfigError("initializer_token", "must be a non-empty word of at most 64 characters")
        check_tuning(self, max_rank=256)
        if self.lora_targets not in LORA_TARGETS:
            raise InvalidConfigError("lora_targets", f"must be one of {', '.join(LORA_TARGETS)}")
        if self.batch_size is not None and not 1 <= self.batch_size <= 64:
            raise InvalidConfigError("batch_size", "must be between 1 and 64")
        if not 8 <= self.max_length <= 8192:
            raise InvalidConfigError("max_length", "must be between 8 and 8192")
        if self.progress_every < 1:
            raise InvalidConfigError("progress_every", "must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))


def with_defaults(config: TextTrainConfig, registry: Registry) -> TextTrainConfig:
    """Fill every None hyperparameter from the model's registered defaults, then TEXT_RECIPE."""
    registered = registered_defaults(config.base_model, registry, kind=Kind.TEXT).get(config.mode, {})
    filled = fill_unset(config, {**TEXT_RECIPE[config.mode], **registered})
    if filled.lora_alpha is None:
        filled = replace(filled, lora_alpha=float(filled.lora_rank))
    return filled
