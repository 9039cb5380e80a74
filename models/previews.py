"""Previews of a succeeded training, the part image and text trainings share (torch-free, so the
API resolves and checks prompts with it): which prompts, and how the result is recorded.

The renderers are models/trainer/preview.py (images) and models/text/preview.py (text completions).
Both load the files the training just wrote, never the live job, so a preview proves they load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.enums import Kind
from models.registry import RegisteredModel
from models.trainer.config import Artifact

TOKEN_FIELD = "{token}"
DEFAULT_IMAGE_PROMPTS = ("a photo of {token}", "a close-up picture of {token}")
DEFAULT_TEXT_PROMPTS = ("Tell me about {token}.", "{token} is")
MAX_PROMPTS = 8
MAX_PROMPT_CHARS = 300


def prompt_templates(model: RegisteredModel, requested: Sequence[str] | None = None) -> list[str]:
    """The caller's prompts, else the model's registered ones, else the kind's defaults."""
    if requested:
        return list(requested)
    if model.preview_prompts:
        return list(model.preview_prompts)
    return list(DEFAULT_TEXT_PROMPTS if model.kind == Kind.TEXT else DEFAULT_IMAGE_PROMPTS)


def fill(templates: Sequence[str], token: str) -> list[str]:
    """Prompts with `{token}` replaced by the training's token."""
    return [template.replace(TOKEN_FIELD, token) for template in templates]


@dataclass
class Previews:
    """What a preview run produced: its files and the summary the manifest and the API show."""

    seconds: float
    """Wall time of the whole preview (loading the files, sampling both models, writing)."""
    prompts: list[str]
    artifacts: list[Artifact] = field(default_factory=list)
    seeds: list[int] | None = None
    """Images: one sample per seed and prompt, from each model."""
    steps: int | None = None
    """Images: the sampler's denoising steps."""
    grid: str | None = None
    """Images: the grid's file (base and fine-tuned rows per prompt, a column per seed)."""
    images: list[dict[str, str]] = field(default_factory=list)
    """Images: [{prompt, name}], the fine-tuned samples of each prompt, one file per prompt."""
    samples: list[dict[str, str]] = field(default_factory=list)
    """Text: [{prompt, base, fine_tuned}], greedy completions of each prompt."""

    def summary(self) -> dict[str, Any]:
        """The JSON the manifest and the training's row keep."""
        summary: dict[str, Any] = {"seconds": round(self.seconds, 3), "prompts": self.prompts}
        if self.grid is not None:
            summary |= {"seeds": self.seeds, "steps": self.steps, "grid": self.grid, "images": self.images}
        if self.samples:
            summary["samples"] = self.samples
        return summary


def record(out_dir: Path, manifest: dict[str, Any], artifacts: list[Artifact], previews: Previews) -> list[Artifact]:
    """The artifacts with the previews' files, and manifest.json written again with a `previews`
    section (its files listed with the others')."""
    from models.trainer.export import MANIFEST_FILE, write_manifest  # torch: only where previews render

    kept = [item for item in artifacts if item.name != MANIFEST_FILE] + previews.artifacts
    written = write_manifest(out_dir, {**manifest, "previews": previews.summary()}, kept)
    return [*kept, written]
