"""The text booster: its dataset builder, storage with a base-model check, the guarded start, and
(on SmolLM2-135M) the committed booster against the generic-word start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from models.registry import load_registry
from models.text.base_model import load_text_base, resolve_text_model
from models.text.booster import (
    TextBooster,
    checked_text_booster,
    load_text_booster,
    new_text_booster,
    read_examples,
    save_text_booster,
    text_booster_resolver,
)
from models.text.booster_bench import batch_loss, split
from models.text.booster_data import (
    INVENTED,
    PLACEHOLDER,
    is_held_out,
    split_words,
    vocabulary_words,
    write_contexts,
)
from models.text.config import TextTrainConfig
from models.text.examples import parse_text_files
from models.text.meta_booster import checked_meta_booster
from models.text.train import attached, start_scorer, train
from models.trainer.errors import BaseModelError

from .text_fixtures import write_tiny_llama

REGISTRY = load_registry()

EXAMPLES = parse_text_files(
    [
        (
            "set.jsonl",
            b"\n".join(
                [
                    b'{"text": "my <leap> is red"}',
                    b'{"text": "the <leap> sat on the mat"}',
                    b'{"text": "question: what is <leap>? answer: a red thing"}',
                ]
            ),
        )
    ]
)
COMMITTED = Path(__file__).resolve().parents[2] / "models" / "text" / "weights" / "smollm2-135m"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-booster"))


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory) -> str:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-other"), seed=1)


def tiny_base(folder: str):
    return load_text_base(folder, torch.device("cpu"))


def fitted_booster(folder: str) -> TextBooster:
    """A booster fitted on the tiny model's own words (random model: only the mechanics matter)."""
    base = tiny_base(folder)
    words = vocabulary_words(base.tokenizer, first_id=0, last_id=400)[:6]
    concepts = write_contexts(base.model, base.tokenizer, words, max_new_tokens=4)
    booster = new_text_booster(base, folder)
    features = torch.stack(
        [
            read_examples(base, c.examples(range(4)), token=PLACEHOLDER, middle_layer=booster.config.middle_layer).mean(
                0
            )
            for c in concepts
        ]
    )
    targets = base.model.get_input_embeddings().weight[torch.tensor([c.token_id for c in concepts])].detach()
    booster.fit(features, targets, ridge=0.1)
    # Every token of the tiny vocabulary is a candidate here (it has few whole words).
    booster.fit_retrieval(base, range(100, 300), [c.examples(range(4)) for c in concepts], PLACEHOLDER)
    return booster


def test_builder_makes_placeholder_contexts_from_whole_word_tokens(tiny) -> None:
    base = tiny_base(tiny)
    words = vocabulary_words(base.tokenizer, first_id=0, last_id=400)
    assert words and all(base.tokenizer(" " + w, add_special_tokens=False).input_ids == [i] for w, i in words)
    train_words, held = split_words(words)
    assert not {w for w, _ in train_words} & {w for w, _ in held}
    assert all(is_held_out(w) for w, _ in held) and not any(is_held_out(w) for w, _ in train_words)
    concepts = write_contexts(base.model, base.tokenizer, words[:3], max_new_tokens=5)
    for concept in concepts:
        assert len(concept.texts) == len(concept.prompts) == 8
        for text, prompt in zip(concept.texts, concept.prompts, strict=True):
            assert text.startswith(prompt) and PLACEHOLDER in prompt
            continuation = text[len(prompt) :]
            assert f" {concept.word} " not in f" {continuation} "  # every use of the word became the placeholder
        held_out = concept.held_out([0])[0]
        assert held_out.prompt + held_out.completion == concept.texts[0]
    examples, held_out = split(concepts[0], seed=1)
    assert len(examples) == len(held_out) == 4
    assert not {e.text for e in examples} & {h.prompt + h.completion for h in held_out}


def test_invented_concepts_are_in_no_vocabulary(tiny) -> None:
    smol_like = tiny_base(tiny).tokenizer
    for concept in INVENTED:
        assert len(smol_like(" " + concept.word, add_special_tokens=False).input_ids) > 1
        assert all(PLACEHOLDER in p and t.startswith(p) for t, p in zip(concept.texts, concept.prompts, strict=True))


def test_booster_round_trips_and_refuses_another_base_model(tiny, other_tiny, tmp_path) -> None:
    booster = fitted_booster(tiny)
    save_text_booster(booster, tmp_path / "booster")
    stored = json.loads((tmp_path / "booster" / "booster.json").read_text())
    assert stored["embedding_width"] == 32 and stored["base_fingerprint"] and stored["num_layers"] == 2
    loaded = checked_text_booster(tmp_path / "booster", tiny_base(tiny))
    assert torch.allclose(
        loaded.predict(tiny_base(tiny), EXAMPLES, "<leap>"), booster.predict(tiny_base(tiny), EXAMPLES, "<leap>")
    )
    retrieved = loaded.retrieve(tiny_base(tiny), EXAMPLES, "<leap>")
    assert retrieved[0] and retrieved[0] == booster.retrieve(tiny_base(tiny), EXAMPLES, "<leap>")[0]
    with pytest.raises(BaseModelError, match="different base model"):
        checked_text_booster(tmp_path / "booster", tiny_base(other_tiny))
    if COMMITTED.is_dir():
        with pytest.raises(BaseModelError, match="embedding width 576"):
            checked_text_booster(COMMITTED, tiny_base(tiny))
    with pytest.raises(BaseModelError, match="cannot read"):
        load_text_booster(tmp_path / "missing")


def test_a_registered_booster_for_another_base_fails_the_job_clearly(tiny, other_tiny, tmp_path) -> None:
    save_text_booster(fitted_booster(other_tiny), tmp_path / "booster")
    registry = {
        "default": "tiny",
        "models": {"tiny": {"kind": "text", "path": tiny, "booster": str(tmp_path / "booster")}},
    }
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(registry))
    registered = load_registry(tmp_path / "registry.yaml")
    assert registered.get("tiny").has_booster
    config = TextTrainConfig(base_model="tiny", mode="token", steps=2, batch_size=2, device="cpu")
    with pytest.raises(BaseModelError, match="trained for another base model") as caught:
        train(
            config, EXAMPLES, tmp_path / "out", registry=registered, booster_resolver=text_booster_resolver(registered)
        )
    assert str(tmp_path) not in caught.value.message


def test_the_start_is_the_candidate_with_the_lowest_loss(tiny) -> None:
    base = tiny_base(tiny)
    booster = fitted_booster(tiny)
    ids, scores = booster.retrieve(base, EXAMPLES, "<leap>")
    assert len(ids) == booster.config.retrieved_words and len(set(ids)) == len(ids)
    assert torch.all(scores[:-1] >= scores[1:]) and set(ids) <= set(booster.vocabulary_ids.tolist())
    weight = base.model.get_input_embeddings().weight.detach().float()
    regression = booster.predict(base, EXAMPLES, "<leap>")
    seen = []

    def closest_to(target):  # a scorer whose lowest loss is at `target`
        def score(vector, examples):
            seen.append(len(examples))
            return float((vector - target).norm())

        return score

    vector, note = booster.start(base, EXAMPLES, "<leap>", closest_to(weight[ids[3]]))
    assert torch.equal(vector, weight[ids[3]]) and repr(base.tokenizer.decode([ids[3]])) in note
    assert seen == [len(EXAMPLES)] * (2 + len(ids))  # the regression, the blend and every word
    vector, note = booster.start(base, EXAMPLES, "<leap>", closest_to(regression))
    assert torch.equal(vector, regression) and note.startswith("booster start: regression")
    blend = (torch.softmax(scores, 0)[:, None] * weight[torch.tensor(ids)]).sum(0)
    vector, note = booster.start(base, EXAMPLES, "<leap>", closest_to(blend + 0.01))
    assert torch.allclose(vector, blend) and "retrieval blend" in note


def test_guarded_start_keeps_the_token_when_the_booster_is_worse(tiny, tmp_path) -> None:
    def config(**overrides):
        values = {
            "base_model": tiny,
            "mode": "token",
            "init": "booster",
            "steps": 2,
            "batch_size": 2,
            "embedding_lr": 0.05,
            "device": "cpu",
        }
        return TextTrainConfig(**{**values, **overrides})

    # A learned token vector is a good start; a huge one is a bad one.
    learned = train(config(init="token", steps=40), EXAMPLES, tmp_path / "learned", registry=REGISTRY)
    vector = torch.tensor(json.loads(json.dumps([v.tolist() for v in _token_rows(learned.out_dir)])))
    starts = {}

    def remember(step, job):
        starts["vector"] = job.concept.input_vectors.detach().clone()

    good = train(
        config(),
        EXAMPLES,
        tmp_path / "good",
        registry=REGISTRY,
        booster_resolver=lambda b, e, c, s: (vector, "learned"),
        eval_hook=remember,
        eval_steps={0},
    )
    guard = good.manifest["init_guard"]
    assert good.init_used == "booster" and guard["chosen"] == "booster"
    assert guard["booster_loss"] < guard["token_loss"] and torch.allclose(starts["vector"], vector)

    bad_vector = torch.full_like(vector, 3.0)
    bad = train(
        config(),
        EXAMPLES,
        tmp_path / "bad",
        registry=REGISTRY,
        booster_resolver=lambda b, e, c, s: (bad_vector, "bad"),
        eval_hook=remember,
        eval_steps={0},
    )
    guard = bad.manifest["init_guard"]
    assert bad.init_used == "token" and guard["chosen"] == "token"
    assert guard["booster_loss"] > guard["token_loss"] and "guarded start" in bad.init_note
    base = tiny_base(tiny)
    with attached(base, config()) as concept:
        concept.init_from_token("thing")
        assert torch.equal(starts["vector"], concept.input_vectors.detach())
    unguarded = train(
        config(),
        EXAMPLES,
        tmp_path / "ablation",
        registry=REGISTRY,
        booster_resolver=lambda b, e, c, s: (bad_vector, ""),
        guarded_start=False,
    )
    assert unguarded.init_used == "booster" and unguarded.manifest["init_guard"]["guarded"] is False


def _token_rows(out_dir: Path) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    return [t[0] for t in load_file(str(out_dir / "token_embeddings.safetensors")).values()]


# ---- SmolLM2-135M with the committed booster -----------------------------------------------------
HELD_OUT_WORDS = ("news", "digital", "pain", "women", "character")


def test_committed_booster_beats_the_generic_word_on_held_out_words(smol_data_dir) -> None:
    base = load_text_base(resolve_text_model("smollm2-135m", smol_data_dir, REGISTRY), torch.device("cpu"))
    booster = checked_text_booster(COMMITTED, base)
    ids = {w: base.tokenizer(" " + w, add_special_tokens=False).input_ids for w in HELD_OUT_WORDS}
    assert all(len(i) == 1 and is_held_out(w) for w, i in ids.items())
    assert all(len(base.tokenizer(" " + c.word, add_special_tokens=False).input_ids) > 1 for c in INVENTED)
    concepts = write_contexts(base.model, base.tokenizer, [(w, i[0]) for w, i in ids.items()])
    config = TextTrainConfig(base_model="smollm2-135m", mode="token", device="cpu")
    with attached(base, config) as attached_concept:

        def held_out_loss(start: torch.Tensor | None, held_out) -> float:
            """The held-out texts' loss with the token at `start` (None: the generic word "thing")."""
            with torch.no_grad():
                if start is None:
                    attached_concept.init_from_token("thing")
                else:
                    attached_concept.input_vectors.copy_(start)
            return batch_loss(base.model, attached_concept.tokenizer, held_out)

        score = start_scorer(base, attached_concept, config.max_length)
        starts = [booster.start(base, split(c, seed=0)[0], PLACEHOLDER, score)[0] for c in concepts]
        own_is_best = 0
        for index, concept in enumerate(concepts):
            held_out = split(concept, seed=0)[1]
            generic = held_out_loss(None, held_out)
            # Its own examples' start first, then every other word's.
            losses = [held_out_loss(start, held_out) for start in starts]
            boosted, others = losses[index], losses[:index] + losses[index + 1 :]
            assert boosted < generic, concept.word
            # Concept-specific: other words' examples give this word a worse start than its own, on average
            # and (for most words) every one of them.
            assert boosted < sum(others) / len(others), concept.word
            own_is_best += boosted < min(others)
        assert own_is_best > len(concepts) / 2
        # The meta booster shipped beside it: better than the generic word on every held-out word, and
        # better from a word's own examples than from the next word's on most of them.
        meta = checked_meta_booster(COMMITTED, base)
        meta_starts = [meta.predict(base, split(c, seed=0)[0], PLACEHOLDER) for c in concepts]
        own_beats_next = 0
        for index, concept in enumerate(concepts):
            held_out = split(concept, seed=0)[1]
            own = held_out_loss(meta_starts[index], held_out)
            assert own < held_out_loss(None, held_out), concept.word
            own_beats_next += own < held_out_loss(meta_starts[(index + 1) % len(concepts)], held_out)
        assert own_beats_next > len(concepts) / 2


def test_init_booster_on_smollm2_uses_the_registered_booster(smol_data_dir, tmp_path) -> None:
    assert REGISTRY.get("smollm2-135m").booster_path == COMMITTED
    examples = parse_text_files(
        [
            ("1.txt", b"My dog <leap> loves to chase red balls in the park."),
            ("2.txt", b"<leap> is a small brown terrier with a loud bark."),
            ("3.txt", b"Every morning, <leap> wakes me up at six by barking."),
        ]
    )
    config = TextTrainConfig(
        base_model="smollm2-135m",
        mode="token",
        init="booster",
        steps=2,
        batch_size=2,
        data_dir=str(smol_data_dir),
        device="cpu",
    )
    result = train(config, examples, tmp_path, registry=REGISTRY, booster_resolver=text_booster_resolver(REGISTRY))
    guard = result.manifest["init_guard"]
    assert guard["chosen"] == result.init_used == "booster"
    assert guard["booster_loss"] < guard["token_loss"]
