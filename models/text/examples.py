"""Parsing text training examples (pure Python, no torch: the API validates uploads with it).

Two shapes of upload: `.txt` files, one example each, or exactly one `.jsonl` file whose lines
are `{"text": ...}` or `{"prompt": ..., "completion": ...}` objects (the loss then covers the
completion only). The concept is written as its token (default `<leap>`) inside the texts.
The exact token limit needs the tokenizer and is checked by the trainer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from models.text.errors import InvalidExamplesError

MIN_EXAMPLES = 2
MAX_EXAMPLES = 500
MAX_EXAMPLE_CHARS = 32_000
"""A cheap bound the API applies before any tokenizer runs (the real limit is max_length tokens)."""
TEXT_SUFFIX = ".txt"
JSONL_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class TextExample:
    """One training example: a plain `text`, or a `prompt` and its `completion`."""

    text: str | None
    prompt: str | None
    completion: str | None
    source: str
    """Where it came from, for error messages: "file" (.txt) or "file:line" (.jsonl)."""

    @property
    def full_text(self) -> str:
        """The whole example as the model reads it."""
        return self.text if self.text is not None else f"{self.prompt}{self.completion}"


def _decode(name: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InvalidExamplesError(f"not UTF-8 text (byte {error.start})", file=name, line=line) from error
    return text.removeprefix("\ufeff")


def _check_length(text: str, name: str, line: int | None) -> None:
    if len(text) > MAX_EXAMPLE_CHARS:
        raise InvalidExamplesError(
            f"example is {len(text)} characters, over the limit of {MAX_EXAMPLE_CHARS}", file=name, line=line
        )


def _parse_txt(name: str, data: bytes) -> TextExample:
    text = _decode(name, data).strip()
    if not text:
        raise InvalidExamplesError("empty example", file=name)
    _check_length(text, name, None)
    return TextExample(text=text, prompt=None, completion=None, source=name)


def _parse_jsonl_line(name: str, number: int, line: str) -> TextExample:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise InvalidExamplesError(f"not valid JSON ({error.msg})", file=name, line=number) from error
    if not isinstance(value, dict):
        raise InvalidExamplesError(f"must be a JSON object, got {type(value).__name__}", file=name, line=number)
    source = f"{name}:{number}"
    has_text = "text" in value
    has_pair = "prompt" in value or "completion" in value
    if has_text == has_pair:
        raise InvalidExamplesError('must have either "text" or "prompt" and "completion"', file=name, line=number)
    if has_text:
        text = value["text"]
        if not isinstance(text, str):
            raise InvalidExamplesError('"text" must be a string', file=name, line=number)
        if not text.strip():
            raise InvalidExamplesError("empty example", file=name, line=number)
        _check_length(text, name, number)
        return TextExample(text=text, prompt=None, completion=None, source=source)
    prompt, completion = value.get("prompt"), value.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise InvalidExamplesError('"prompt" and "completion" must both be strings', file=name, line=number)
    if not completion.strip():
        raise InvalidExamplesError('empty "completion"', file=name, line=number)
    _check_length(prompt + completion, name, number)
    return TextExample(text=None, prompt=prompt, completion=completion, source=source)


def _parse_jsonl(name: str, data: bytes) -> list[TextExample]:
    text = _decode(name, data)
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, spacing) are not examples
        examples.append(_parse_jsonl_line(name, number, line))
        if len(examples) > MAX_EXAMPLES:
            raise InvalidExamplesError(f"more than {MAX_EXAMPLES} examples", file=name, line=number)
    return examples


def parse_text_files(files: Sequence[tuple[str, bytes]], *, token: str | None = "<leap>") -> list[TextExample]:
    """Parse uploaded (name, bytes) files into 2-500 examples; raise InvalidExamplesError.

    With `token` set, at least one example must use it (None skips that check).
    """
    if not files:
        raise InvalidExamplesError(f"no examples: upload {MIN_EXAMPLES}-{MAX_EXAMPLES} .txt files or one .jsonl file")
    suffixes = [Path(name).suffix.lower() for name, _ in files]
    for (name, _), suffix in zip(files, suffixes, strict=True):
        if suffix not in (TEXT_SUFFIX, JSONL_SUFFIX):
            raise InvalidExamplesError("unsupported file type: expected .txt or .jsonl", file=name)
    if JSONL_SUFFIX in suffixes:
        if len(files) > 1:
            jsonl = next(name for (name, _), s in zip(files, suffixes, strict=True) if s == JSONL_SUFFIX)
            raise InvalidExamplesError(
                "a .jsonl upload must be the only file (no other .jsonl or .txt files)", file=jsonl
            )
        examples = _parse_jsonl(*files[0])
    else:
        if len(files) > MAX_EXAMPLES:
            raise InvalidExamplesError(f"need {MIN_EXAMPLES}-{MAX_EXAMPLES} examples, got {len(files)} .txt files")
        examples = [_parse_txt(name, data) for name, data in files]
    if not MIN_EXAMPLES <= len(examples) <= MAX_EXAMPLES:
        where = files[0][0] if JSONL_SUFFIX in suffixes else None
        raise InvalidExamplesError(f"need {MIN_EXAMPLES}-{MAX_EXAMPLES} examples, got {len(examples)}", file=where)
    if token is not None and not any(token in example.full_text for example in examples):
        raise InvalidExamplesError(f"no example uses the concept token {token}; write it where the concept appears")
    return examples


def read_text_path(path: Path) -> list[tuple[str, bytes]]:
    """Read a .jsonl file, or every non-hidden file of a folder (sorted by name), as (name, bytes)."""
    if path.is_file():
        return [(path.name, path.read_bytes())]
    if not path.is_dir():
        raise InvalidExamplesError(f"{path} is neither a folder of .txt files nor a .jsonl file")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [(p.name, p.read_bytes()) for p in files]
