"""Request and response models of the trainings API (they make openapi.yaml)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, Field, Json, field_validator

from app.validation import RequestModel
from models.trainer.config import TOKEN_PATTERN

Status = Literal["queued", "running", "succeeded", "failed", "canceled"]
Kind = Literal["image", "text"]
TEXT_ONLY_FIELDS = ("max_length", "lora_targets")
IMAGE_ONLY_FIELDS = ("max_steps",)


class TrainingForm(RequestModel):
    """The optional form fields of POST /v1/trainings (sent as multipart text parts)."""

    token: str | None = Field(
        None,
        description="Placeholder token the concept is bound to, e.g. <cat>; its text also names the "
        "A1111/ComfyUI files (cat.safetensors, cat_lora.safetensors). Default: <leap-XXXXXXXX>, "
        "from the training's id, for an image model; <leap> for a text model (its examples write it).",
        pattern=TOKEN_PATTERN.pattern,
    )
    mode: Literal["pivotal", "textual_inversion", "lora", "token"] = Field(
        "pivotal",
        description="pivotal: embedding then embedding + LoRA; or one of the two alone. Image models: "
        "pivotal, textual_inversion or lora; text models: pivotal, token or lora.",
    )
    init: Literal["booster", "token", "random"] = Field(
        "booster",
        description="How the embedding starts: the base model's booster (falls back to token), "
        "the initializer word's embedding, or random.",
    )
    steps: int | None = Field(
        None,
        ge=1,
        le=20_000,
        description="Run exactly this many optimisation steps. Default: stop when done (see max_steps).",
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        le=20_000,
        description="Without steps: the cap on a training that stops once its loss on a fixed evaluation of "
        "its own images stops improving; default per model. Not together with steps.",
    )
    embedding_lr: float | None = Field(None, gt=0, le=1)
    lora_lr: float | None = Field(None, gt=0, le=1)
    pivot_embedding_lr: float | None = Field(
        None, gt=0, le=1, description="pivotal: the embedding's rate while LoRA trains."
    )
    lora_rank: int | None = Field(None, ge=1, le=128)
    num_vectors: int | None = Field(None, ge=1, le=16, description="Embedding vectors behind the token.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    max_length: int | None = Field(
        None,
        ge=8,
        le=8192,
        description="Text models only: token limit per example (default 256); a longer example fails the "
        "training with invalid_examples naming its file and line.",
    )
    lora_targets: Literal["attention", "attention+mlp"] | None = Field(
        None, description="Text models only: LoRA on the attention projections (default), or also the MLP."
    )
    base_model: str | None = Field(
        None, max_length=100, description="A model id from GET /v1/models; default: the server's default."
    )
    webhook_url: str | None = Field(
        None, max_length=2048, description="http(s) URL told about state changes (delivery: tenancy issue)."
    )
    metadata: Json[dict[str, Any]] | None = Field(None, description="A JSON object stored with the training.")

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("must be an http(s) URL with a host")
        return value

    def hyperparameters(self) -> dict[str, Any]:
        """The training knobs the caller set (None: the base model's default)."""
        names: tuple[str, ...] = (
            "steps",
            "max_steps",
            "embedding_lr",
            "lora_lr",
            "pivot_embedding_lr",
            "lora_rank",
            "num_vectors",
            "seed",
        )
        names += TEXT_ONLY_FIELDS
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class TrainingRequest(TrainingForm):
    """multipart/form-data body of POST /v1/trainings (documentation only; parsed by uploads.py)."""

    images: list[bytes] = Field(
        default_factory=list,
        description="Image models: 2-50 image files (PNG, JPEG, WebP, ...), or one .zip of images.",
        json_schema_extra={"items": {"type": "string", "format": "binary"}},
    )
    examples: list[bytes] = Field(
        default_factory=list,
        description="Text models: 2-500 .txt files (one example each), or one .jsonl file whose lines are "
        '{"text": ...} or {"prompt": ..., "completion": ...} objects. The concept is written as the token.',
        json_schema_extra={"items": {"type": "string", "format": "binary"}},
    )
    metadata: str | None = Field(None, description="A JSON object, as text.")  # type: ignore[assignment]


class Progress(BaseModel):
    step: int
    total: int | None
    loss: float | None
    eta_s: float | None


class TrainingError(BaseModel):
    code: str = Field(
        description="invalid_images, invalid_examples, invalid_config, invalid_base_model, out_of_memory, "
        "worker_lost, internal, ..."
    )
    message: str


class EvalPoint(BaseModel):
    step: int
    loss: float


class Usage(BaseModel):
    steps: int = Field(description="Steps actually run (what is billed).")
    compute_seconds: float
    device: str


class Artifact(BaseModel):
    name: str
    kind: str = Field(
        description="embedding and lora (diffusers), webui_embedding and webui (A1111/ComfyUI embedding and "
        "LoRA), or manifest"
    )
    bytes: int
    sha256: str
    url: str = Field(description="Presigned download URL (attachment); expires at expires_at.")
    expires_at: datetime


class Training(BaseModel):
    id: str
    status: Status
    base_model: str
    kind: Kind = Field(description="image or text: the base model's kind, which decides the inputs and modes.")
    mode: str
    init: str = Field(description="The requested initialisation.")
    init_used: str | None = Field(
        description="The initialisation actually used, set once it ran: booster, token, random or state."
    )
    init_note: str | None = Field(
        None,
        description="Why init_used differs from init (e.g. no booster is registered for the base model), or "
        "which start the guard chose and why.",
    )
    init_scores: dict[str, float] | None = Field(
        None,
        description="init=booster: the guard's loss of each candidate start (token, booster, booster+lora, "
        "booster/token midpoint) on the job's images; the lowest started.",
    )
    stop_reason: Literal["converged", "max_steps", "steps", "canceled"] | None = Field(
        None,
        description="Why it stopped: converged (its evaluation stopped improving), max_steps (the cap), steps "
        "(an explicit step count ran out) or canceled; null until it finished running.",
    )
    eval_curve: list[EvalPoint] | None = Field(
        None, description="Without steps: the loss on the fixed evaluation the stopping rule watched, by step."
    )
    token: str
    parameters: dict[str, Any] = Field(description="Hyperparameters given at submission.")
    image_count: int = Field(description="Images of an image training; 0 for a text training.")
    example_count: int | None = Field(description="Examples of a text training; null for an image training.")
    skipped_files: list[str] = Field(
        default_factory=list,
        description="Entries of a submitted zip that were skipped as not images (notes.txt, .DS_Store, "
        "Thumbs.db, __MACOSX/...), in zip order.",
    )
    estimated_units: int | None = Field(
        description="Billable units this training is estimated to cost, known at submission "
        "(GET /v1/usage has the recorded ones)."
    )
    progress: Progress
    error: TrainingError | None
    usage: Usage | None
    artifacts: list[Artifact]
    attempts: int
    webhook_url: str | None
    metadata: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    artifacts_expired_at: datetime | None


class TrainingList(BaseModel):
    data: list[Training]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null at the end.")


class TrainingLogLine(BaseModel):
    seq: int = Field(description="1, 2, ... within the training.")
    at: datetime
    level: Literal["info", "warning", "error"]
    message: str = Field(
        description="A trainer progress line (`step 40/200 loss 0.1234 eta 12s`) or a note: the claim, the "
        "start the guard chose, why it stopped, retries, requeues, errors."
    )


class TrainingLogPage(BaseModel):
    data: list[TrainingLogLine]
    next_after: int = Field(
        description="Pass as `after` for the lines that follow (the last seq of this page, or `after` "
        "itself when the page is empty: poll again later)."
    )
