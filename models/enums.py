"""The ML core's vocabulary: what kind of base model, how a concept is tuned, how it starts, why it stopped.

StrEnum members are their values (`Mode.LORA == "lora"`), so configs, JSON and database columns keep plain
strings; use `.value` in messages that show a repr."""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    IMAGE = "image"
    TEXT = "text"


class Family(StrEnum):
    """An image base model's architecture: SD 1.x/2.x (one CLIP text encoder) or SDXL (two)."""

    SD = "sd"
    SDXL = "sdxl"


class Mode(StrEnum):
    PIVOTAL = "pivotal"
    TEXTUAL_INVERSION = "textual_inversion"
    LORA = "lora"
    TOKEN = "token"


class Init(StrEnum):
    BOOSTER = "booster"
    TOKEN = "token"
    RANDOM = "random"


class StopReason(StrEnum):
    CONVERGED = "converged"
    MAX_STEPS = "max_steps"
    STEPS = "steps"
    CANCELED = "canceled"


IMAGE_MODES = (Mode.TEXTUAL_INVERSION, Mode.LORA, Mode.PIVOTAL)
TEXT_MODES = (Mode.TOKEN, Mode.LORA, Mode.PIVOTAL)
INITS = (Init.BOOSTER, Init.TOKEN, Init.RANDOM)
