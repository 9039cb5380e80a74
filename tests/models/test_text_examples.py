"""Parsing text uploads: every bad input names its file (and line)."""

import json

import pytest

from models.registry import load_registry
from models.text.config import TextTrainConfig, with_defaults
from models.text.errors import InvalidExamplesError
from models.text.examples import MAX_EXAMPLE_CHARS, MAX_EXAMPLES, TextExample, parse_text_files
from models.trainer.errors import InvalidConfigError


def jsonl(*rows) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def test_txt_files_are_one_example_each() -> None:
    examples = parse_text_files([("a.txt", b"\xef\xbb\xbfMy <leap> is red.\n"), ("b.TXT", b"  <leap> sleeps.  ")])
    assert examples == [
        TextExample(text="My <leap> is red.", prompt=None, completion=None, source="a.txt"),
        TextExample(text="<leap> sleeps.", prompt=None, completion=None, source="b.TXT"),
    ]


def test_jsonl_text_and_prompt_completion_lines() -> None:
    data = jsonl({"text": "a <leap> here"}, "", {"prompt": "Q: what is <leap>?\nA:", "completion": " a cat"})
    examples = parse_text_files([("set.jsonl", data + b"\n")])
    assert [e.source for e in examples] == ["set.jsonl:1", "set.jsonl:3"]
    assert examples[1].prompt == "Q: what is <leap>?\nA:" and examples[1].completion == " a cat"
    assert examples[1].full_text == "Q: what is <leap>?\nA: a cat"


@pytest.mark.parametrize(
    ("files", "file", "line", "words"),
    [
        ([("a.txt", b"<leap> ok"), ("b.txt", b"caf\xe9 <leap>")], "b.txt", 1, "UTF-8"),
        ([("s.jsonl", b'{"text": "<leap> a"}\n{"text": "caf\xe9"}')], "s.jsonl", 2, "UTF-8"),
        ([("a.txt", b"<leap> ok"), ("b.txt", b" \n\t")], "b.txt", None, "empty"),
        ([("s.jsonl", jsonl({"text": "<leap>"}, {"text": "  "}))], "s.jsonl", 2, "empty"),
        ([("s.jsonl", jsonl({"text": "<leap>"}, "[1, 2]"))], "s.jsonl", 2, "JSON object"),
        ([("s.jsonl", jsonl({"text": "<leap>"}, "{nope"))], "s.jsonl", 2, "not valid JSON"),
        ([("s.jsonl", jsonl({"text": "<leap>"}, {"txt": "x"}))], "s.jsonl", 2, '"text" or "prompt"'),
        ([("s.jsonl", jsonl({"text": "<leap>"}, {"prompt": "x"}))], "s.jsonl", 2, "both be strings"),
        ([("s.jsonl", jsonl({"text": "<leap>"}, {"prompt": "x", "completion": ""}))], "s.jsonl", 2, "completion"),
        ([("s.jsonl", jsonl({"text": "<leap>"}, {"text": 3}))], "s.jsonl", 2, "must be a string"),
        ([("s.jsonl", jsonl({"text": "<leap>"})), ("a.txt", b"<leap>")], "s.jsonl", None, "only file"),
        ([("a.txt", b"<leap>"), ("b.md", b"<leap>")], "b.md", None, ".txt or .jsonl"),
        ([("s.jsonl", jsonl({"text": "<leap>"}))], "s.jsonl", None, "need 2-500 examples, got 1"),
        ([("a.txt", b"<leap>"), ("b.txt", b"x" * (MAX_EXAMPLE_CHARS + 1))], "b.txt", None, "characters"),
    ],
)
def test_bad_uploads_name_file_and_line(files, file, line, words) -> None:
    with pytest.raises(InvalidExamplesError) as caught:
        parse_text_files(files)
    assert caught.value.file == file and caught.value.line == line
    assert words in caught.value.message
    assert caught.value.code == "invalid_examples"
    assert caught.value.message.startswith(f"{file}:{line}" if line else file or "")


def test_counts_and_token_use() -> None:
    with pytest.raises(InvalidExamplesError, match="no examples"):
        parse_text_files([])
    with pytest.raises(InvalidExamplesError, match="^need 2-500 examples, got 1$"):
        parse_text_files([("a.txt", b"<leap>")])
    too_many = [(f"{i}.txt", b"<leap>") for i in range(MAX_EXAMPLES + 1)]
    with pytest.raises(InvalidExamplesError, match="got 501"):
        parse_text_files(too_many)
    with pytest.raises(InvalidExamplesError, match="more than 500") as caught:
        parse_text_files([("s.jsonl", jsonl(*[{"text": "<leap>"}] * (MAX_EXAMPLES + 1)))])
    assert caught.value.line == MAX_EXAMPLES + 1
    with pytest.raises(InvalidExamplesError, match="concept token <sks>"):
        parse_text_files([("a.txt", b"<leap>"), ("b.txt", b"<leap>")], token="<sks>")
    assert len(parse_text_files([("a.txt", b"plain"), ("b.txt", b"text")], token=None)) == 2


def test_config_validation_and_registry_defaults() -> None:
    registry = load_registry()
    entry = registry.get("smollm2-135m")
    assert entry is not None and entry.kind == "text" and entry.gguf is not None
    assert registry.default_id == "leap-tiny" and registry.get("leap-tiny").kind == "image"
    filled = with_defaults(TextTrainConfig(base_model="smollm2-135m", mode="token"), registry)
    # A default text job stops when done: the registry gives a cap, not a step count.
    assert filled.steps is None and filled.max_steps == entry.defaults["token"]["max_steps"]
    assert filled.lora_alpha == filled.lora_rank
    assert with_defaults(TextTrainConfig(base_model="smollm2-135m", mode="token", steps=7), registry).max_steps is None
    assert with_defaults(TextTrainConfig(base_model="smollm2-135m", mode="lora", max_steps=9), registry).steps is None
    for field, value in [
        ("mode", "textual_inversion"),
        ("init", "x"),
        ("token", "leap"),
        ("max_length", 4),
        ("lora_targets", "mlp"),
        ("steps", 0),
        ("max_steps", 0),
        ("embedding_lr", 2.0),
        ("num_vectors", 0),
        ("initializer_token", " "),
    ]:
        with pytest.raises(InvalidConfigError) as caught:
            TextTrainConfig(base_model="x", **{field: value}).validate()
        assert caught.value.field == field


def test_each_trainer_refuses_the_other_kind_of_registered_model() -> None:
    from models.text.base_model import resolve_text_model
    from models.trainer.defaults import resolve_base_model
    from models.trainer.errors import BaseModelError

    registry = load_registry()
    with pytest.raises(BaseModelError, match="is a text model"):
        resolve_base_model("smollm2-135m", registry)
    with pytest.raises(BaseModelError, match="is an image model"):
        resolve_text_model("leap-tiny", None, registry)
    assert resolve_base_model("leap-tiny", registry).endswith("leap-tiny")
