"""The inputs of a text training: .txt files (one example each) or one .jsonl in the `examples`
field, parsed before anything is stored; and the refusal of inputs sent to a model of the other kind.

torch-free: the examples are parsed with models.text.examples, as the worker parses them again.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from app.errors import InvalidExamples, InvalidImages, PayloadTooLarge
from app.settings import Settings
from app.trainings import captions
from app.trainings.uploads import EXAMPLES_FIELD, IMAGES_FIELD, UploadedFile
from models.registry import RegisteredModel
from models.text.errors import InvalidExamplesError
from models.text.examples import JSONL_SUFFIX, MAX_EXAMPLES, MIN_EXAMPLES, TEXT_SUFFIX, TextExample, parse_text_files
from models.trainer.images import IMAGE_SUFFIXES

TEXT_SUFFIXES = frozenset({TEXT_SUFFIX, JSONL_SUFFIX})


def _suffix(name: str) -> str:
    return PurePosixPath(name).suffix.lower()


def refuse_text_for_image_model(
    images: list[UploadedFile], examples: list[UploadedFile], model: RegisteredModel, *, field: str = IMAGES_FIELD
) -> None:
    """422 invalid_images when text examples are sent to an image model, naming the file and the
    field it came in (images, examples, or images_url when it was fetched)."""
    text_files = [upload for upload in images if _suffix(upload.filename) in TEXT_SUFFIXES]
    # A .txt named after an image beside it is that image's caption (app/trainings/captions.py).
    image_names = [upload.filename for upload in images if not captions.is_caption_file(upload.filename)]
    paired = captions.pair_caption_files([upload.filename for upload in text_files], image_names)
    text_files = [upload for upload in text_files if upload.filename not in paired]
    field = field if text_files else EXAMPLES_FIELD
    text_files = text_files or examples
    if text_files:
        name = text_files[0].filename
        raise InvalidImages(
            f"{field}: {name} is a text file, but {model.id} is an image model; send {model.id} images "
            f"in the '{IMAGES_FIELD}' field, or choose a text base model (kind text in GET /v1/models)",
            details={"file": name, "field": field, "base_model": model.id, "kind": model.kind},
        )


def _refuse_images_for_text_model(
    images: list[UploadedFile], examples: list[UploadedFile], model: RegisteredModel
) -> None:
    """422 invalid_examples when images are sent to a text model (in `images`, or as image files in
    `examples`), worded as the refusal of text sent to an image model."""
    field, sent = IMAGES_FIELD, images
    if not sent:
        field, sent = EXAMPLES_FIELD, [upload for upload in examples if _suffix(upload.filename) in IMAGE_SUFFIXES]
    if sent:
        name = sent[0].filename
        raise InvalidExamples(
            f"{field}: {name} is an image, but {model.id} is a text model; send {model.id} text examples "
            f"(.txt files, one example each, or one .jsonl file) in the '{EXAMPLES_FIELD}' field, or choose an "
            f"image base model (kind image in GET /v1/models)",
            details={"file": name, "field": field, "base_model": model.id, "kind": model.kind},
        )


def _check_sizes(examples: list[UploadedFile], settings: Settings) -> None:
    for upload in examples:
        if upload.size > settings.max_text_file_bytes:
            raise PayloadTooLarge(
                f"{upload.filename}: {upload.size} bytes is over the per-file limit of "
                f"{settings.max_text_file_bytes} bytes",
                details={"file": upload.filename, "limit": settings.max_text_file_bytes},
            )
    # The examples are read whole to be parsed: bound them together, not only one by one, so 500 files
    # just under the per-file limit cannot make the API hold the whole request body in memory.
    total = sum(upload.size for upload in examples)
    if total > settings.max_text_file_bytes:
        raise PayloadTooLarge(
            f"{EXAMPLES_FIELD}: {total} bytes in all is over the limit of {settings.max_text_file_bytes} bytes "
            f"for a text training's examples",
            details={"field": EXAMPLES_FIELD, "limit": settings.max_text_file_bytes},
        )


def collect_examples(
    images: list[UploadedFile], examples: list[UploadedFile], *, model: RegisteredModel, token: str, settings: Settings
) -> tuple[list[tuple[str, bytes]], list[TextExample]]:
    """The (name, bytes) of the files to store (as uploaded) and the examples they hold: 2-500 .txt
    files or one .jsonl, each parsed.

    Raises 422 invalid_examples naming the file (and line) for anything the trainer could not use,
    except the exact token limit, which needs the tokenizer and is checked by the worker."""
    _refuse_images_for_text_model(images, examples, model)
    if not examples:
        raise InvalidExamples(
            f"no examples: send {MIN_EXAMPLES}-{MAX_EXAMPLES} .txt files or one .jsonl file in the "
            f"'{EXAMPLES_FIELD}' field",
            details={"count": 0, "field": EXAMPLES_FIELD},
        )
    _check_sizes(examples, settings)
    files = [(upload.filename, upload.read_all()) for upload in examples]
    try:
        parsed = parse_text_files(files, token=token)
    except InvalidExamplesError as error:
        details: dict[str, object] = {"file": error.file} if error.file else {"field": EXAMPLES_FIELD}
        if error.line is not None:
            details["line"] = error.line
        raise InvalidExamples(error.message, details=details) from error
    return files, parsed
