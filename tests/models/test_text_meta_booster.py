"""The meta-learned text booster on a tiny random Llama: the masked reader, the head's output, its
training loss (the job's own loss), storage with a base-model check, and its place among a job's
booster candidates."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from models.registry import load_registry
from models.text.base_model import load_text_base
from models.text.booster import new_text_booster, save_text_booster, text_booster_resolver
from models.text.booster_data import PLACEHOLDER
from models.text.concept import TextConcept
from models.text.config import TextTrainConfig
from models.text.data import collate, lm_loss, pad_id_of, tokenize_example
from models.text.examples import TextExample
from models.text.meta_booster import (
    MASK_WORD,
    Support,
    checked_meta_booster,
    load_meta_booster,
    new_meta_booster,
    prepare_support,
    read_support,
    save_meta_booster,
)
from models.text.meta_booster_train import QueryBatch, concept_tokenizer, episodes, query_loss
from models.text.train import train
from models.trainer.errors import BaseModelError

from .text_fixtures import write_tiny_llama

TEXTS = ["my <leap> is red and round", "the <leap> sat on the mat", "question: what is <leap>? a red thing"]
EXAMPLES = [TextExample(text=t, prompt=None, completion=None, source=f"set.jsonl:{i}") for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-meta"))


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory) -> str:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-meta-other"), seed=1)


def base_of(folder: str):
    return load_text_base(folder, torch.device("cpu"))


def trained_head(folder: str):
    """A meta booster with non-zero output weights (untrained heads predict the mean embedding)."""
    torch.manual_seed(0)
    booster = new_meta_booster(base_of(folder), folder, hidden=16, heads=2)
    with torch.no_grad():
        for parameter in booster.out.parameters():
            parameter.normal_(0, 0.1)
        booster.point_weight.fill_(0.5)
    return booster


def random_support(concepts: int, texts: int, width: int, tokens: int = 6) -> tuple[Support, torch.Tensor]:
    mask = torch.ones(concepts, texts, tokens, dtype=torch.bool)
    mask[..., tokens // 2 :] = False
    support = Support(
        torch.randn(concepts, texts, 4 * width),
        torch.randn(concepts, texts, tokens, width),
        torch.zeros(concepts, texts, tokens, dtype=torch.long),
        mask,
    )
    return support, torch.randn(concepts, texts, tokens, width)


def test_the_reader_masks_the_concept_token(tiny) -> None:
    base = base_of(tiny)
    tokenizer = base.tokenizer
    read = prepare_support(tokenizer, TEXTS[1], PLACEHOLDER)
    masked = TEXTS[1].replace(PLACEHOLDER, MASK_WORD)
    assert tokenizer.decode(read.ids).startswith(masked)  # the base reads the mask word, never "<leap>"
    assert PLACEHOLDER not in tokenizer.decode(read.ids)
    assert tokenizer.decode(read.ids[read.mask_position :]).lstrip().startswith(MASK_WORD)
    assert tokenizer.decode(read.ids[: read.probe_start]) == masked
    # The pointer reads the text's own tokens: every one but the mask word's and the probe's.
    assert tokenizer.decode([read.ids[i] for i in read.words]) == masked.replace(" " + MASK_WORD, "")
    # Reading the placeholder text is reading the text with the mask word written out.
    middle = base.model.config.num_hidden_layers - 1
    support = read_support(base, TEXTS, PLACEHOLDER, middle_layer=middle)
    features = support.pooled
    written = read_support(base, [t.replace(PLACEHOLDER, "<tok>") for t in TEXTS], "<tok>", middle_layer=middle)
    assert features.shape == (3, 4 * base.width) and torch.allclose(features, written.pooled, atol=1e-5)
    assert torch.equal(support.ids, written.ids) and support.states.shape[:2] == support.mask.shape
    words = [prepare_support(tokenizer, t, PLACEHOLDER).words for t in TEXTS]
    assert support.mask.sum(1).tolist() == [len(w) for w in words]
    # The state before the mask depends on the left context only: different continuations, same state.
    pair = read_support(base, ["the <leap> sat down", "the <leap> was blue"], PLACEHOLDER, middle_layer=middle).pooled
    width = base.width
    assert torch.allclose(pair[0, :width], pair[1, :width], atol=1e-5)
    assert not torch.allclose(pair[0, width:], pair[1, width:])


def test_output_is_one_embedding_row_of_the_model_dtype(tiny) -> None:
    base = base_of(tiny)
    booster = trained_head(tiny)
    untrained = new_meta_booster(base, tiny, hidden=16, heads=2)
    mean = base.model.get_input_embeddings().weight.float().mean(0)
    assert torch.allclose(untrained.predict(base, EXAMPLES, PLACEHOLDER), mean, atol=1e-6)
    vector = booster.predict(base, EXAMPLES, PLACEHOLDER)
    assert vector.shape == (base.width,) and vector.dtype == torch.float32
    assert not torch.allclose(vector, booster.predict(base, EXAMPLES[:1], PLACEHOLDER))  # reads its examples
    support, embeddings = random_support(5, 3, base.width)
    assert booster(support, embeddings).shape == (5, base.width)  # tied: the input row is the output row
    # Support texts form a set: their order does not change the prediction.
    flipped = support.map(lambda x: x.flip(1))
    assert torch.allclose(booster(support, embeddings), booster(flipped, embeddings.flip(1)), atol=1e-5)
    # The pointer mixes the embeddings of real tokens only: padding rows change nothing.
    padded = embeddings.clone()
    padded[..., 3:, :] = 100.0
    assert torch.allclose(booster(support, embeddings), booster(support, padded), atol=1e-5)
    assert not torch.allclose(booster(support, embeddings), booster(support, embeddings + 1.0))


def test_untied_models_get_an_output_row_too(tmp_path) -> None:
    untied = base_of(write_tiny_llama(tmp_path / "untied", tied=False))
    booster = new_meta_booster(untied, "untied", hidden=16, heads=2)
    assert booster(*random_support(2, 3, untied.width)).shape == (2, 2 * untied.width)
    assert booster.predict(untied, EXAMPLES, PLACEHOLDER).shape == (untied.width,)


def test_the_training_loss_is_the_jobs_loss_with_that_start(tiny) -> None:
    base = base_of(tiny)
    tokenizer, token_id = concept_tokenizer(base)
    queries = [TextExample(text=None, prompt="the <leap>", completion=" sat on <leap> mat", source="q:1")]
    vectors = torch.randn(2, base.width, requires_grad=True)
    batch = QueryBatch(tokenizer, token_id, [(1, queries[0]), (0, queries[0])], pad_id_of(tokenizer))
    losses = query_loss(base, batch, vectors, reduce=False)
    concept = TextConcept(base, token=PLACEHOLDER, num_vectors=1)
    try:
        for row, index in ((0, 1), (1, 0)):
            with torch.no_grad():
                concept.input_vectors.copy_(vectors[index][None])
                row_ids = tokenize_example(concept.tokenizer, queries[0], expand=lambda t: t, max_length=64)
                job = lm_loss(base.model, collate([row_ids], pad_id_of(concept.tokenizer), base.device))
            assert torch.allclose(losses[row], job, atol=1e-4)
    finally:
        concept.close()
    losses.sum().backward()  # the gradient reaches the vectors, not the frozen base
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0
    assert all(p.grad is None for p in base.model.parameters())
    supports, query_sets = episodes(random.Random(0), 3, 8, 2, (2, 5))
    assert len({len(s) for s in supports}) == 1
    assert all(not set(s) & set(q) for s, q in zip(supports, query_sets, strict=True))


def test_round_trips_in_half_precision_and_refuses_another_base_model(tiny, other_tiny, tmp_path) -> None:
    booster = trained_head(tiny)
    save_meta_booster(booster, tmp_path / "meta")
    stored = json.loads((tmp_path / "meta" / "meta_booster.json").read_text())
    assert stored["embedding_width"] == 32 and stored["base_fingerprint"] and stored["tied"] is True
    loaded = checked_meta_booster(tmp_path / "meta", base_of(tiny))
    expected = booster.predict(base_of(tiny), EXAMPLES, PLACEHOLDER)
    assert torch.allclose(loaded.predict(base_of(tiny), EXAMPLES, PLACEHOLDER), expected, atol=1e-2)
    with pytest.raises(BaseModelError, match="different base model"):
        checked_meta_booster(tmp_path / "meta", base_of(other_tiny))
    with pytest.raises(BaseModelError, match="cannot read"):
        load_meta_booster(tmp_path / "missing")


def registry_with(tiny: str, folder: Path, tmp_path: Path):
    data = {"default": "tiny", "models": {"tiny": {"kind": "text", "path": tiny, "booster": str(folder)}}}
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(data))
    return load_registry(tmp_path / "registry.yaml")


def test_a_job_scores_the_meta_prediction_among_its_candidates(tiny, other_tiny, tmp_path) -> None:
    folder = tmp_path / "booster"
    base = base_of(tiny)
    retrieval = new_text_booster(base, tiny)  # regression only: zero weights, its start is zeros
    save_text_booster(retrieval, folder)
    save_meta_booster(trained_head(tiny), folder)
    registry = registry_with(tiny, folder, tmp_path)
    config = TextTrainConfig(base_model="tiny", mode="token", init="booster", steps=1, batch_size=2, device="cpu")
    meta = checked_meta_booster(folder, base)
    folds = meta.predict_folds(base, EXAMPLES, PLACEHOLDER)
    # Three examples, three folds: each prediction read two of them and is scored on the third.
    assert [left for _, left in folds] == [[], [0], [1], [2]]
    assert torch.allclose(folds[1][0], meta.predict(base, EXAMPLES[1:], PLACEHOLDER), atol=1e-5)
    scored: list[tuple[torch.Tensor, list[str]]] = []

    def score(vector, examples):
        scored.append((vector, [e.source for e in examples]))
        # Low only where a fold's prediction meets the example it did not read: the meta booster wins.
        return 0.0 if len(examples) == 1 else 1.0

    vectors, note = text_booster_resolver(registry)(base, EXAMPLES, config, score)
    assert "meta booster" in note and "did not read" in note and vectors.shape == (1, base.width)
    assert torch.allclose(vectors[0], meta.predict(base, EXAMPLES, PLACEHOLDER))
    for (vector, left), (scored_vector, sources) in zip(folds[1:], scored[:3], strict=True):
        assert sources == [EXAMPLES[i].source for i in left] and torch.equal(vector, scored_vector)
    save_meta_booster(trained_head(other_tiny), tmp_path / "foreign")
    save_text_booster(retrieval, tmp_path / "foreign")
    registry = registry_with(tiny, tmp_path / "foreign", tmp_path)
    with pytest.raises(BaseModelError, match="trained for another base model"):
        train(config, EXAMPLES, tmp_path / "out", registry=registry, booster_resolver=text_booster_resolver(registry))
