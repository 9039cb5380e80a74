"""Request and response models of the trainings API (they make openapi.yaml)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, Json, ValidationInfo, field_validator

from app.enums import TrainingStatus
from app.trainings.captions import parse_captions_field
from app.validation import RequestModel
from app.webhooks.schemas import TRAINING_EVENT_TYPES, TrainingEventType
from models.enums import Init, Kind, Mode, StopReason
from models.previews import MAX_PROMPT_CHARS, MAX_PROMPTS
from models.trainer.captions import CAPTION_PLACEHOLDERS, MAX_CAPTION_CHARS
from models.trainer.config import TOKEN_PATTERN

TEXT_ONLY_FIELDS = ("max_length", "lora_targets")
IMAGE_ONLY_FIELDS = ("preset", "train_text_encoder", "captions")
PRIORITY_RANGE = (-100, 100)
CAPTIONS_DESCRIPTION = (
    "Image models: per-image captions, as a JSON object {image file name: caption} or a JSON array in image "
    "order (null for an image without one); they replace the .txt caption files sent beside the images "
    "(photo.png and photo.txt, in the zip or as parts of images) for the images they name. An image's caption "
    "is its training prompt instead of the preset's templates. The token goes where the caption writes the token "
    "itself or one of "
    + ", ".join(CAPTION_PLACEHOLDERS)
    + " ([trigger] and [token] in any case, TOK as a word); a caption that writes none of them gets the token "
    f'in front ("<token>, a dog on the beach"). At most {MAX_CAPTION_CHARS} characters each.'
)

WEBHOOK_EVENTS_FILTER_DESCRIPTION = (
    "The events sent to this training's webhook_url, among "
    + ", ".join(TRAINING_EVENT_TYPES)
    + " (Replicate's start is training.started; its completed is training.succeeded, training.failed and "
    "training.canceled). Only together with webhook_url; default: all of them. The tenant's registered "
    "webhook endpoints keep their own event_types."
)


def parse_prompt_list(value: Any) -> Any:
    """preview_prompts as sent: a JSON array of strings, or text with one prompt per line (a multipart
    part is text; prompts may hold commas)."""
    if value is None or isinstance(value, list):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a JSON array of prompts, or prompts one per line")
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not a JSON array ({error.msg})") from error
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_event_list(value: Any) -> Any:
    """webhook_events_filter as sent: a JSON array or comma-separated text (a multipart part is text),
    each an event type a training's webhook_url receives; returned without duplicates, sorted."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"not a JSON array ({error.msg})") from error
        else:
            value = [item.strip() for item in text.split(",")] if text else []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("must be a JSON array of event names, or event names separated by commas")
    unknown = [item for item in value if item not in TRAINING_EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event {unknown[0]!r}; the events are {', '.join(TRAINING_EVENT_TYPES)}")
    if not value:
        raise ValueError("names no event; leave it out to receive every event")
    return sorted(set(value), key=TRAINING_EVENT_TYPES.index)


class TrainingForm(RequestModel):
    """The optional form fields of POST /v1/trainings (sent as multipart text parts)."""

    token: str | None = Field(
        None,
        description="Placeholder token the concept is bound to, e.g. <cat>; its text also names the "
        "A1111/ComfyUI files (cat.safetensors, cat_lora.safetensors). Default: <leap-XXXXXXXX>, "
        "from the training's id, for an image model; <leap> for a text model (its examples write it).",
        pattern=TOKEN_PATTERN.pattern,
    )
    mode: Mode = Field(
        Mode.PIVOTAL,
        description="pivotal: embedding then embedding + LoRA; or one of the two alone. Image models: "
        "pivotal, textual_inversion or lora; text models: pivotal, token or lora.",
    )
    init: Init = Field(
        Init.BOOSTER,
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
        "its own inputs (images, or text examples) stops improving; default per model. Not together with steps.",
    )
    embedding_lr: float | None = Field(None, gt=0, le=1)
    lora_lr: float | None = Field(None, gt=0, le=1)
    pivot_embedding_lr: float | None = Field(
        None, gt=0, le=1, description="pivotal: the embedding's rate while LoRA trains."
    )
    lora_rank: int | None = Field(None, ge=1, le=128)
    num_vectors: int | None = Field(None, ge=1, le=16, description="Embedding vectors behind the token.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    batch_size: int | None = Field(
        None, ge=1, le=64, description="Images (or text examples) per optimisation step; default per model."
    )
    lora_alpha: float | None = Field(
        None,
        gt=0,
        le=1024,
        description="lora and pivotal: the LoRA's scale is lora_alpha / lora_rank; default: lora_rank (scale 1). "
        "The exported files reproduce the trained scale.",
    )
    train_text_encoder: bool | None = Field(
        None,
        validation_alias=AliasChoices("train_text_encoder", "lora_text_encoder"),
        description="Image models, lora and pivotal: LoRA on the text encoder too (also accepted as "
        "lora_text_encoder); its layers are in both LoRA files. Default false: the UNet only.",
    )
    preset: Literal["object", "person", "style"] | None = Field(
        None,
        description="Image models: what the images show, which picks the prompt templates of uncaptioned images "
        '(and the initializer word): object ("a photo of a <token>", the default), person ("a portrait of '
        '<token>") or style ("a painting in the style of <token>").',
    )
    captions: dict[str, str] | list[str | None] | None = Field(None, description=CAPTIONS_DESCRIPTION)
    priority: int | None = Field(
        None,
        ge=PRIORITY_RANGE[0],
        le=PRIORITY_RANGE[1],
        description=f"{PRIORITY_RANGE[0]} to {PRIORITY_RANGE[1]}, default 0: among this tenant's queued trainings, "
        "workers claim higher priorities first, then older ones. It never moves a training ahead of other "
        "tenants' trainings.",
    )
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
        None,
        max_length=2048,
        description="http(s) URL told about this training's state changes (signed like every webhook).",
    )
    webhook_events_filter: list[TrainingEventType] | None = Field(None, description=WEBHOOK_EVENTS_FILTER_DESCRIPTION)
    metadata: Json[dict[str, Any]] | None = Field(None, description="A JSON object stored with the training.")
    previews: bool | None = Field(
        None,
        description="Default true: once it succeeded, the worker loads the files it wrote and renders previews "
        "(image models: preview.png, a base vs. fine-tuned grid, and preview-N.png per prompt; text models: "
        "previews.json, base and fine-tuned completions). Their time is not billed. false: none.",
    )
    preview_prompts: list[str] | None = Field(
        None,
        min_length=1,
        max_length=MAX_PROMPTS,
        description=f"The previews' prompts (at most {MAX_PROMPTS}, {MAX_PROMPT_CHARS} characters each), each "
        "naming the concept as {token} or as the token itself; a JSON array, or one prompt per line. Default: "
        "the base model's (GET /v1/models).",
    )

    @field_validator("preview_prompts", mode="before")
    @classmethod
    def _prompt_list(cls, value: Any) -> Any:
        return parse_prompt_list(value)

    @field_validator("preview_prompts")
    @classmethod
    def _prompts_name_the_token(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        if info.data.get("previews") is False:
            raise ValueError("not together with previews=false")
        for index, prompt in enumerate(value):
            if not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
                raise ValueError(f"prompt {index + 1} must have 1-{MAX_PROMPT_CHARS} characters")
        return value  # each names the concept: checked once the token is known (jobs.preview_prompt_problem)

    @field_validator("webhook_events_filter", mode="before")
    @classmethod
    def _event_list(cls, value: Any) -> Any:
        return parse_event_list(value)

    @field_validator("captions", mode="before")
    @classmethod
    def _captions(cls, value: Any) -> Any:
        return None if value is None else parse_captions_field(value)

    @field_validator("train_text_encoder")
    @classmethod
    def _with_a_lora(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value and info.data.get("mode") == Mode.TEXTUAL_INVERSION:
            raise ValueError("textual_inversion trains no LoRA; use mode lora or pivotal")
        return value

    @field_validator("webhook_events_filter")
    @classmethod
    def _with_webhook_url(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        # It filters the training's own URL; a tenant's registered endpoints have their own event_types.
        if value is not None and "webhook_url" in info.data and info.data["webhook_url"] is None:
            raise ValueError("only together with webhook_url (webhook endpoints filter with their own event_types)")
        return value

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
            "batch_size",
            "lora_alpha",
            "train_text_encoder",
            "preset",
        )
        names += TEXT_ONLY_FIELDS
        names += ("previews", "preview_prompts")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class TrainingFieldsRequest(TrainingForm):
    """A submission of form fields only, inputs given by URL: multipart/form-data without file parts, or
    application/x-www-form-urlencoded (documentation only; parsed by uploads.py)."""

    images_url: list[str] = Field(
        default_factory=list,
        description="Image models, instead of `images`: the http(s) URL of a .zip of images (as Replicate's "
        "input_images), or repeated, one URL per image (2-50). The API downloads it at submission through the "
        "SSRF guard (public addresses only, each redirect checked, at most LEAP_INPUT_URL_MAX_REDIRECTS), within "
        "LEAP_MAX_UPLOAD_BYTES in all (413 past it) and LEAP_INPUT_URL_TIMEOUT; then the same checks as uploads. "
        "A refused or failed fetch is a 422 naming images_url. Not together with `images`.",
        max_length=50,
    )
    examples_url: list[str] = Field(
        default_factory=list,
        description="Text models, instead of `examples`: the URL of one .jsonl file, or repeated, one URL per "
        ".txt example; fetched as images_url is, within LEAP_MAX_TEXT_FILE_BYTES. Not together with `examples`.",
        max_length=50,
    )
    metadata: str | None = Field(None, description="A JSON object, as text.")  # type: ignore[assignment]
    webhook_events_filter: str | None = Field(  # type: ignore[assignment]
        None,
        description="As text: a JSON array (" + '["training.started", "training.succeeded"]' + ") or event names "
        "separated by commas. " + WEBHOOK_EVENTS_FILTER_DESCRIPTION,
    )


class TrainingRequest(TrainingFieldsRequest):
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


class TrainingJsonRequest(TrainingForm):
    """application/json body of POST /v1/trainings (documentation only; parsed by uploads.py): the form's
    fields with their JSON types, inputs by URL or as base64 data URIs. The same checks and limits as
    multipart, the whole body within LEAP_MAX_JSON_BODY_BYTES."""

    images_url: str | list[str] | None = Field(
        None, description="As in multipart: one URL (a .zip, as Replicate's input_images) or an array of them."
    )
    examples_url: str | list[str] | None = Field(None, description="As in multipart: one URL or an array of them.")
    images: list[str] | None = Field(
        None,
        description="Image models, for small sets: 2-50 images (or one .zip) as base64 data URIs, "
        "e.g. data:image/png;base64,iVBOR...",
    )
    examples: list[str] | None = Field(
        None,
        description="Text models: .txt examples (data:text/plain;base64,...) or one .jsonl "
        "(data:application/jsonl;base64,...) as base64 data URIs.",
    )
    metadata: dict[str, Any] | None = Field(None, description="A JSON object stored with the training.")


class Progress(BaseModel):
    step: int
    total: int | None = Field(
        description="The planned steps, known from submission: `steps`, or for a training that stops when "
        "done its cap (max_steps or the model's default); once it succeeded, the steps it ran. Null only for "
        "trainings submitted before LEAP recorded it."
    )
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
    url: str | None = Field(
        description="Presigned download URL (attachment); expires at expires_at. Null in webhook payloads: a "
        "payload may be delivered or redelivered after any link would have expired; GET urls.get for fresh links."
    )
    expires_at: datetime | None = Field(description="When url stops working; null when url is.")


class PreviewImage(BaseModel):
    prompt: str
    name: str = Field(description="The artifact holding it (preview.png, preview-1.png, ...).")
    url: str | None = Field(None, description="Its artifact's presigned URL; null where the artifacts' are.")
    expires_at: datetime | None = None


class PreviewSample(BaseModel):
    prompt: str
    base: str = Field(description="The base model's greedy completion.")
    fine_tuned: str = Field(description="The completion with the trained files loaded.")


class Previews(BaseModel):
    """What a succeeded training rendered from the files it wrote (not billed)."""

    seconds: float = Field(description="Wall time of the previews on the worker (loading, sampling, writing).")
    prompts: list[str] = Field(description="The prompts, with the token filled in.")
    seeds: list[int] | None = Field(None, description="Image models: one sample per seed and prompt, per model.")
    steps: int | None = Field(None, description="Image models: the sampler's denoising steps.")
    grid: PreviewImage | None = Field(
        None, description="Image models: preview.png, base model and fine-tuned rows per prompt, a column per seed."
    )
    images: list[PreviewImage] = Field(
        default_factory=list, description="Image models: the fine-tuned samples of each prompt, one file each."
    )
    samples: list[PreviewSample] = Field(
        default_factory=list, description="Text models: each prompt's completion before and after (previews.json)."
    )

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_file(cls, value: Any) -> Any:
        # The row keeps the grid's file name; the API shows it as an image like the others.
        return {"prompt": "", "name": value} if isinstance(value, str) else value


class TrainingUrls(BaseModel):
    """The training's endpoints, absolute: under LEAP_PUBLIC_URL when it is set, else the address the
    request (for webhooks: the submission) was sent to, as a trusted proxy forwarded it."""

    get: str = Field(description="GET: the training.")
    cancel: str | None = Field(description="POST: cancel it; null once it finished.")
    stream: str | None = Field(description="GET: its progress and logs as server-sent events; null once it finished.")
    logs: str = Field(description="GET: its log lines.")


class TrainingState(BaseModel):
    """A training as its row has it (pydantic reads the ORM row's attributes, `progress`, `error`, `usage`
    and `input_urls` included); Training adds what the API adds: queue_position, artifacts, urls."""

    model_config = ConfigDict(from_attributes=True)

    object: Literal["training"] = "training"
    id: str
    status: TrainingStatus
    base_model: str
    kind: Kind = Field(description="image or text: the base model's kind, which decides the inputs and modes.")
    mode: Mode
    init: Init = Field(description="The requested initialisation.")
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
        "booster/token midpoint; where the base model registers several boosters, the others' starts are "
        "named by their folder, e.g. leap-tiny-world) on the job's images; the lowest started.",
    )
    stop_reason: StopReason | None = Field(
        None,
        description="Why it stopped: converged (its evaluation stopped improving), max_steps (the cap), steps "
        "(an explicit step count ran out) or canceled; null until it finished running.",
    )
    eval_curve: list[EvalPoint] | None = Field(
        None, description="Without steps: the loss on the fixed evaluation the stopping rule watched, by step."
    )
    token: str
    parameters: dict[str, Any] = Field(description="Hyperparameters given at submission.")
    priority: int = Field(0, description="Its priority among the tenant's queued trainings (higher first, then older).")
    caption_count: int = Field(
        0, description="Images of an image training that have a caption (from the captions field or .txt files)."
    )
    image_count: int = Field(description="Images of an image training; 0 for a text training.")
    input_urls: list[str] = Field(
        default_factory=list,
        description="The images_url / examples_url the inputs were fetched from, without credentials or query "
        "string; empty for uploaded files.",
    )
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
    queue_position: int | None = Field(
        None,
        description="While queued: its place in the whole queue (every tenant's queued trainings), 1 = the next "
        "a free worker claims, in the order workers claim them (trainings put back after a worker was lost "
        "first, then oldest first; within a tenant, a higher priority takes the place of the tenant's next "
        "training); null once it is not queued.",
    )
    progress: Progress
    error: TrainingError | None
    usage: Usage | None
    artifacts: list[Artifact] = Field(default_factory=list)
    previews: Previews | None = Field(
        None,
        description="Once it succeeded with previews on: the pictures (image) or completions (text) rendered "
        "from the trained files; null otherwise.",
    )
    attempts: int
    webhook_url: str | None
    webhook_events_filter: list[str] | None = Field(
        None, description="The events sent to webhook_url; null: every training event."
    )
    metadata: dict[str, Any] = Field(validation_alias=AliasChoices("metadata_", "metadata"))
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    artifacts_expired_at: datetime | None
    urls: TrainingUrls | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, uuid.UUID) else value

    @field_validator("eval_curve", mode="before")
    @classmethod
    def _eval_points(cls, value: Any) -> Any:
        # The row stores [[step, loss], ...]; the API's JSON has {step, loss} objects.
        if not value:
            return None
        return [
            {"step": int(point[0]), "loss": point[1]} if isinstance(point, list | tuple) else point for point in value
        ]

    @field_validator("skipped_files", mode="before")
    @classmethod
    def _no_skipped(cls, value: Any) -> Any:
        return [] if value is None else value


class Training(TrainingState):
    """A training, as every endpoint returns it and as every training.* webhook carries it in `data`."""

    model_config = ConfigDict(from_attributes=False)

    artifacts: list[Artifact]
    urls: TrainingUrls


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
