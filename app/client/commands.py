"""`leap submit | status | list | cancel | download | logs`: the API from a shell, over LeapClient.

Scripts can rely on the exit codes (ExitCode) and on stdout carrying only results (ids, paths,
tab-separated rows, or JSON with --json); progress and errors go to stderr as `error: CODE: message`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from enum import IntEnum
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from app.client.client import (
    ApiError,
    ChecksumMismatch,
    LeapClient,
    NoInputs,
    RetryNotice,
    Unreachable,
    WaitTimeout,
    input_files,
)
from app.client.previews import open_file, preview_path, sample_lines
from app.client.progress import state_text, steps_text
from app.enums import TrainingStatus
from app.tenants.local_key import LOCAL_KEY_FILE, read_local_key
from app.trainings.schemas import Training, TrainingForm
from models.enums import Kind, StopReason

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_DATA_DIR = Path(".leap")


class ExitCode(IntEnum):
    """Exit codes of the client commands (documented in the README)."""

    OK = 0
    TRAINING_UNSUCCESSFUL = 1
    """The training failed or was canceled (or, for download, has not succeeded)."""
    USAGE = 2
    """Bad arguments or options (checked here, or a 422 naming one), no images, no API key (also typer's
    own usage errors)."""
    REFUSED = 3
    """The API refused the request (401, 402, 409, 413, 415, a 422 about an image or example, ...): the
    error code is printed."""
    NOT_FOUND = 4
    """No such training for this key."""
    UNREACHABLE = 5
    """The server could not be reached, answered 5xx, or stayed busy (429/503) through every retry."""
    CHECKSUM_MISMATCH = 6
    """A downloaded artifact's sha256 differs from the API's; the file is not kept."""
    TIMEOUT = 7
    """--timeout passed before the training finished."""


P = ParamSpec("P")
R = TypeVar("R")
stderr = Console(stderr=True)


def fail(code: ExitCode, error_code: str, message: str) -> typer.Exit:
    """Print `error: CODE: message` on stderr; return the Exit to raise."""
    typer.echo(f"error: {error_code}: {message}", err=True)
    return typer.Exit(int(code))


def option_name(field: str) -> str:
    """The command-line option of an API field: max_steps -> --max-steps."""
    if field == "preview_prompts":
        return "--preview-prompt"  # repeated, one prompt each
    return "--" + field.replace("_", "-").lower()


def _is_usage_error(error: ApiError) -> bool:
    """A 422 naming a field: every field a command sends comes from one of its arguments or options."""
    return error.status_code == 422 and error.code == "validation_error" and bool(error.details.get("field"))


def _client_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Map the client's exceptions to exit codes and one-line messages."""

    @wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ApiError as error:
            if error.status_code == 404:
                code = ExitCode.NOT_FOUND
            elif _is_usage_error(error):
                code = ExitCode.USAGE
            elif error.status_code >= 500 or error.status_code in (429, 503):
                code = ExitCode.UNREACHABLE
            else:
                code = ExitCode.REFUSED
            raise fail(code, error.code, error.message) from None
        except Unreachable as error:
            raise fail(ExitCode.UNREACHABLE, "unreachable", str(error)) from None
        except ChecksumMismatch as error:
            raise fail(ExitCode.CHECKSUM_MISMATCH, "checksum_mismatch", str(error)) from None
        except WaitTimeout as error:
            raise fail(ExitCode.TIMEOUT, "timeout", str(error)) from None

    return run


UrlOption = Annotated[str, typer.Option("--url", envvar="LEAP_URL", help="Base URL of the LEAP API.")]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="LEAP_API_KEY",
        show_default=False,
        help=f"API key (default: the key `leap serve` wrote to {LOCAL_KEY_FILE} in --data-dir).",
    ),
]
DataDirOption = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="LEAP_DATA_DIR",
        help="The embedded server's data folder, where `leap serve` keeps its API key.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of text.")]


def open_client(url: str, api_key: str | None, *, data_dir: Path) -> LeapClient:
    """A client for url with the given key, or the embedded server's local key kept in data_dir."""
    if not api_key:
        api_key = read_local_key(data_dir)
    if not api_key:
        raise fail(ExitCode.USAGE, "no_api_key", "set LEAP_API_KEY or pass --api-key")
    retries = os.environ.get("LEAP_MAX_RETRIES", "")
    return LeapClient(
        url,
        api_key,
        poll_interval_max=2.0,
        max_retries=int(retries) if retries.isdigit() else 5,
        on_retry=_say_retry,
    )


def _say_retry(notice: RetryNotice) -> None:
    """A busy or unreachable server: say what the command waits for, instead of waiting silently."""
    typer.echo(f"waiting: {notice.describe()}", err=True)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _captions_option(value: str | None) -> str | None:
    """--captions as JSON text: given inline, or the content of the .json file it names."""
    if value is None or value.lstrip().startswith(("{", "[")):
        return value
    path = Path(value)
    if not path.is_file():
        raise fail(ExitCode.USAGE, "validation_error", f"--captions: {value} is neither JSON nor a file")
    return path.read_text(encoding="utf-8")


def _check_form(form: dict[str, Any]) -> None:
    """Check the options by the API's own rules before anything is uploaded: a bad one is a usage error
    (exit 2) naming the option, not a refusal after the upload."""
    fields = {
        name: str(value).lower() if isinstance(value, bool) else str(value)
        for name, value in form.items()
        if value is not None
    }
    try:
        TrainingForm.model_validate(fields)
    except ValidationError as error:
        problem = error.errors()[0]
        field = str(problem["loc"][0]) if problem["loc"] else "form"
        message = problem["msg"].removeprefix("Value error, ")
        raise fail(ExitCode.USAGE, "validation_error", f"{option_name(field)}: {message}") from None


def _summary(training: Training) -> str:
    progress = training.progress
    steps = steps_text(progress.step, progress.total).removesuffix(" steps")
    loss = f"{progress.loss:.4f}" if progress.loss is not None else "-"
    return "\t".join((training.id, training.status, training.created_at.isoformat(), training.base_model, steps, loss))


def _steps_run(training: Training) -> str:
    """How many steps ran and why it stopped, e.g. "stopped early at step 35 of 400 (converged)"."""
    steps = training.usage.steps if training.usage else training.progress.step
    cap = training.parameters.get("max_steps") or training.progress.total
    if training.stop_reason == StopReason.CONVERGED:
        return f"stopped early at step {steps}" + (f" of {cap}" if cap and cap != steps else "") + " (converged)"
    if training.stop_reason == StopReason.MAX_STEPS:
        return f"{steps} steps (reached max_steps without converging)"
    return f"{steps} steps"


def _describe(training: Training) -> str:
    progress = training.progress
    usage = training.usage
    init = f"{training.init} -> {training.init_used or '-'}"
    loss = f"{progress.loss:.4f}" if progress.loss is not None else "-"
    lines = [
        ("id", training.id),
        ("status", state_text(training)),
        ("base model", f"{training.base_model} ({training.kind}: {training.mode}, token {training.token})"),
        (
            "inputs",
            f"{training.example_count} text examples"
            if training.kind == Kind.TEXT
            else f"{training.image_count} images",
        ),
        ("init", init + (f" ({training.init_note})" if training.init_note else "")),
        ("progress", f"{steps_text(progress.step, progress.total)}, loss {loss}"),
        ("created", training.created_at.isoformat()),
        ("finished", training.finished_at.isoformat() if training.finished_at else "-"),
    ]
    if training.error:
        lines.append(("error", f"{training.error.code}: {training.error.message}"))
    if usage:
        lines.append(("usage", f"{_steps_run(training)}, {usage.compute_seconds:.1f}s on {usage.device}"))
    for artifact in training.artifacts:
        lines.append(("artifact", f"{artifact.name} ({artifact.kind}, {artifact.bytes} bytes, {artifact.sha256})"))
    return "\n".join(f"{name:<11}{value}" for name, value in lines)


def _inputs(source: Path) -> list[Path]:
    try:
        return input_files(source)
    except NoInputs as error:
        raise fail(ExitCode.USAGE, "no_images", str(error)) from None


def _unsuccessful(training: Training) -> typer.Exit:
    error = training.error
    detail = f"{error.code}: {error.message}" if error else training.status
    return fail(ExitCode.TRAINING_UNSUCCESSFUL, training.status, f"training {training.id} {training.status} ({detail})")


def _download(client: LeapClient, training: Training, out: Path | None, as_json: bool, open_preview: bool) -> None:
    folder = out if out is not None else Path("leap-out") / training.id
    paths = client.download(training, folder)
    if not as_json:
        for path in paths:
            typer.echo(str(path))
    for artifact in training.artifacts:
        stderr.print(f"  {artifact.kind:<10} {artifact.name}  {artifact.bytes} bytes  sha256 ok")
    _show_previews(training, folder, open_preview)


def _show_previews(training: Training, folder: Path, open_preview: bool) -> None:
    """Say where the previews are (a text training's completions are printed too); --open shows them."""
    path = preview_path(training, folder)
    if path is None:
        if open_preview:
            stderr.print("no previews to open: this training was submitted with previews off")
        return
    for line in sample_lines(training):
        stderr.print(line, markup=False, highlight=False)
    stderr.print(f"preview: {path}", markup=False, highlight=False)
    if open_preview:
        if open_file(path):
            stderr.print(f"opened {path.name} in the default viewer")
        else:
            stderr.print(f"no viewer to open {path.name} on this machine; copy it to one with a display")


@_client_errors
def submit_command(
    inputs: Annotated[
        Path | None,
        typer.Argument(
            help="Image models: a folder of 2-50 images, or one .zip of them. Text models (--base-model): "
            "a folder of 2-500 .txt files (one example each), or one .jsonl file. Omit with --images-url "
            "or --examples-url.",
            metavar="[INPUTS]",
        ),
    ] = None,
    images_url: Annotated[
        list[str] | None,
        typer.Option(
            help="Instead of INPUTS: the URL of a .zip of images (or repeat it, one URL per image); the server "
            "downloads it."
        ),
    ] = None,
    examples_url: Annotated[
        list[str] | None,
        typer.Option(help="Text models, instead of INPUTS: the URL of a .jsonl file (or repeat: one per .txt)."),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    steps: Annotated[int | None, typer.Option(help="Run exactly this many steps (default: stop when done).")] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Without --steps: the cap on a training that stops when done.")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="Image models: pivotal, textual_inversion or lora; text: pivotal, token or lora.")
    ] = None,
    init: Annotated[str | None, typer.Option(help="booster, token or random.")] = None,
    token: Annotated[str | None, typer.Option(help="Placeholder token, e.g. <leap>.")] = None,
    base_model: Annotated[str | None, typer.Option(help="A model id from GET /v1/models.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    lora_rank: Annotated[int | None, typer.Option()] = None,
    embedding_lr: Annotated[float | None, typer.Option()] = None,
    lora_lr: Annotated[float | None, typer.Option()] = None,
    num_vectors: Annotated[int | None, typer.Option()] = None,
    max_length: Annotated[int | None, typer.Option(help="Text models: token limit per example.")] = None,
    lora_targets: Annotated[str | None, typer.Option(help="Text models: attention (default) or attention+mlp.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images (or examples) per step (default per model).")] = None,
    lora_alpha: Annotated[float | None, typer.Option(help="The LoRA's scale is alpha / rank (default: the rank).")] = (
        None
    ),
    train_text_encoder: Annotated[
        bool | None,
        typer.Option(
            "--train-text-encoder/--no-train-text-encoder", help="Image models: LoRA on the text encoder too."
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Image models: object (default), person or style: the prompt templates.")
    ] = None,
    captions: Annotated[
        str | None,
        typer.Option(
            help="Image models: captions as JSON ({image name: caption} or an array in image order) or a .json "
            "file of them; [trigger], [token] or TOK in a caption becomes the token. Caption files beside the "
            "images (photo.txt for photo.png) are sent without this."
        ),
    ] = None,
    priority: Annotated[
        int | None, typer.Option(help="-100 to 100 (default 0): your queued trainings run by priority, then age.")
    ] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Told about state changes.")] = None,
    webhook_events_filter: Annotated[
        str | None,
        typer.Option(
            help="The events sent to --webhook-url, comma-separated: training.queued, training.started, "
            "training.succeeded, training.failed, training.canceled (default: all)."
        ),
    ] = None,
    metadata: Annotated[str | None, typer.Option(help="A JSON object stored with the training.")] = None,
    previews: Annotated[
        bool | None,
        typer.Option(
            "--previews/--no-previews", help="Render previews from the trained files once it succeeds (default on)."
        ),
    ] = None,
    preview_prompt: Annotated[
        list[str] | None,
        typer.Option(help="A preview prompt naming the concept as {token} (repeat it; default: the model's)."),
    ] = None,
    open_preview: Annotated[
        bool, typer.Option("--open", help="Open the downloaded preview in the default viewer, where there is one.")
    ] = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Re-running with the same key returns the same training.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow progress and download.")] = True,
    out: Annotated[Path | None, typer.Option(help="Artifacts folder (default: leap-out/<id>).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Give up waiting after this many seconds.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Upload images (or text examples), follow the training live, download and verify its artifacts.

    stdout: the training id, then each downloaded file (or the final JSON with --json)."""
    if metadata is not None:
        try:
            parsed = json.loads(metadata)
        except ValueError as error:
            raise fail(ExitCode.USAGE, "invalid_metadata", f"--metadata is not JSON: {error}") from None
        if not isinstance(parsed, dict):
            raise fail(ExitCode.USAGE, "invalid_metadata", "--metadata must be a JSON object")
    by_url = bool(images_url or examples_url)
    if inputs is None and not by_url:
        raise fail(ExitCode.USAGE, "no_images", "no inputs: give a folder or file, or --images-url / --examples-url")
    if inputs is not None and by_url:
        raise fail(ExitCode.USAGE, "inputs_and_url", "give INPUTS or --images-url / --examples-url, not both")
    form = {
        "steps": steps,
        "max_steps": max_steps,
        "mode": mode,
        "init": init,
        "token": token,
        "base_model": base_model,
        "seed": seed,
        "lora_rank": lora_rank,
        "embedding_lr": embedding_lr,
        "lora_lr": lora_lr,
        "num_vectors": num_vectors,
        "max_length": max_length,
        "lora_targets": lora_targets,
        "batch_size": batch_size,
        "lora_alpha": lora_alpha,
        "train_text_encoder": train_text_encoder,
        "preset": preset,
        "captions": _captions_option(captions),
        "priority": priority,
        "webhook_url": webhook_url,
        "webhook_events_filter": webhook_events_filter,
        "metadata": metadata,
        "previews": previews,
        "preview_prompts": json.dumps(preview_prompt) if preview_prompt else None,
    }
    _check_form(form)
    files = _inputs(inputs) if inputs is not None else []
    with open_client(url, api_key, data_dir=data_dir) as client:
        training = client.submit(
            files, idempotency_key=idempotency_key, images_url=images_url, examples_url=examples_url, **form
        )
        sent = f"{len(files)} file(s)" if files else f"{len(images_url or examples_url or [])} URL(s)"
        stderr.print(f"submitted {sent}: training {training.id}")
        if not as_json:
            typer.echo(training.id)
        if not wait:
            if as_json:
                _print_json(training.model_dump(mode="json"))
            return
        from app.client.progress import follow

        training = follow(client, training.id, stderr, timeout=timeout)
        if training.status != TrainingStatus.SUCCEEDED:
            if as_json:
                _print_json(training.model_dump(mode="json"))
            raise _unsuccessful(training)
        if training.usage:
            stderr.print(
                f"succeeded: {_steps_run(training)} in {training.usage.compute_seconds:.1f}s on "
                f"{training.usage.device}; init {training.init_used}"
                + (f" ({training.init_note})" if training.init_note else "")
            )
        _download(client, training, out, as_json, open_preview)
        if as_json:
            _print_json(training.model_dump(mode="json"))


@_client_errors
def status_command(
    training_id: Annotated[str, typer.Argument(help="The training id.")],
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    as_json: JsonOption = False,
) -> None:
    """Show one training: status, progress, error, usage and artifacts."""
    with open_client(url, api_key, data_dir=data_dir) as client:
        training = client.get(training_id)
    typer.echo(json.dumps(training.model_dump(mode="json"), indent=2) if as_json else _describe(training))


@_client_errors
def list_command(
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    status: Annotated[str | None, typer.Option(help="Only trainings in this state.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).", min=1)] = 20,
    as_json: JsonOption = False,
) -> None:
    """List your trainings, newest first: id, status, created_at, base_model, steps, loss (tab-separated)."""
    with open_client(url, api_key, data_dir=data_dir) as client:
        trainings = []
        for training in client.iter_trainings(status=status, page_size=min(limit, 100)):
            trainings.append(training)
            if len(trainings) >= limit:
                break
    if as_json:
        _print_json([training.model_dump(mode="json") for training in trainings])
        return
    for training in trainings:
        typer.echo(_summary(training))


@_client_errors
def cancel_command(
    training_id: Annotated[str, typer.Argument(help="The training id.")],
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until it has stopped.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Give up waiting after this many seconds.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a training (idempotent) and print its status; a finished training stays as it is."""
    with open_client(url, api_key, data_dir=data_dir) as client:
        training = client.cancel(training_id)
        if wait:
            training = client.wait(training_id, timeout=timeout)
    typer.echo(json.dumps(training.model_dump(mode="json"), indent=2) if as_json else training.status)


@_client_errors
def download_command(
    training_id: Annotated[str, typer.Argument(help="The training id.")],
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    out: Annotated[Path | None, typer.Option(help="Artifacts folder (default: leap-out/<id>).")] = None,
    open_preview: Annotated[
        bool, typer.Option("--open", help="Open the downloaded preview in the default viewer, where there is one.")
    ] = False,
) -> None:
    """Download a succeeded training's artifacts, verifying each sha256; prints each file's path."""
    with open_client(url, api_key, data_dir=data_dir) as client:
        training = client.get(training_id)
        if training.status != TrainingStatus.SUCCEEDED:
            raise _unsuccessful(training)
        _download(client, training, out, as_json=False, open_preview=open_preview)


@_client_errors
def logs_command(
    training_id: Annotated[str, typer.Argument(help="The training id.")],
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    after: Annotated[int, typer.Option(help="Only lines after this seq.", min=0)] = 0,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the training finishes.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Print a training's log lines: seq, time, level and message (tab-separated), or JSON lines."""

    def show(line: dict[str, Any]) -> None:
        if as_json:
            typer.echo(json.dumps(line))
        else:
            typer.echo(f"{line['seq']}\t{line['at']}\t{line['level']}\t{line['message']}")

    with open_client(url, api_key, data_dir=data_dir) as client:
        last = after
        for line in client.iter_logs(training_id, after=after):
            show(line.model_dump(mode="json"))
            last = line.seq
        if not follow:
            return
        for event in client.stream(training_id, last_event_id=last):
            if event.event == "log" and int(event.data["seq"]) > last:
                show(event.data)
                last = int(event.data["seq"])


COMMANDS: dict[str, Callable[..., None]] = {
    "submit": submit_command,
    "status": status_command,
    "list": list_command,
    "cancel": cancel_command,
    "download": download_command,
    "logs": logs_command,
}
