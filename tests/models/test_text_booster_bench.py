"""The text booster benchmark's measures on a tiny random Llama: speed-up, in-context learning, vectors."""

from __future__ import annotations

import pytest
import torch

from models.registry import load_registry
from models.text.base_model import load_text_base
from models.text.bench import icl_request_cost
from models.text.booster_bench import (
    Bench,
    batch_loss,
    compare,
    icl_prompt_tokens,
    mean_cosine,
    speedup,
)
from models.text.examples import TextExample

from .text_fixtures import write_tiny_llama

REGISTRY = load_registry()
TRAIN = [
    TextExample(text=text, prompt=None, completion=None, source=f"{i}.txt")
    for i, text in enumerate(["my <leap> is red", "the <leap> sat on the mat", "a <leap> is a small thing"])
]
HELD_OUT = [
    TextExample(text=None, prompt="what is <leap>?", completion=" a red thing", source="q0"),
    TextExample(text=None, prompt="the <leap>", completion=" sat on the mat", source="q1"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-bench"))


def token_start(base, examples, config, score):
    """A "booster" whose start is the initializer token itself (what the baseline starts from)."""
    concept_vectors = base.model.get_input_embeddings().weight
    word = base.tokenizer(config.initializer_token, add_special_tokens=False).input_ids[0]
    return concept_vectors[word].detach().clone().expand(config.num_vectors, -1).clone(), "the token"


def test_speedup_counts_a_target_met_at_step_zero_as_one_step() -> None:
    assert speedup(0, 0) == 1.0  # both already at the target: the booster is no faster, not 0x
    assert speedup(0, 4) == 0.25 and speedup(20, 0) == 20.0 and speedup(20, 5) == 4.0
    assert speedup(20, None) == 0.0 and speedup(None, 3) is None


def test_a_baseline_at_its_target_at_step_zero_scores_a_booster_that_is_too_one_x(tiny) -> None:
    base = load_text_base(tiny, torch.device("cpu"))
    bench = Bench(tiny, None, REGISTRY, steps=3)
    # A rate that moves nothing: both runs sit at their start, which is the baseline's best (the target).
    still = {"embedding_lr": 1e-12}
    record = compare(
        bench,
        base,
        "token",
        0,
        TRAIN,
        HELD_OUT,
        rates={"baseline": still, "start": still},
        boosters={"start": token_start},
    )
    own = record["boosters"]["start"]["own_rate"]
    assert record["baseline"]["steps"] == 0 and own["steps"] == 0 and own["init_used"] == "booster"
    assert own["speedup"] == 1.0


def test_in_context_learning_is_measured_beside_every_run(tiny) -> None:
    base = load_text_base(tiny, torch.device("cpu"))
    bench = Bench(tiny, None, REGISTRY, steps=4)
    rates = {"embedding_lr": 0.05}
    record = compare(
        bench,
        base,
        "token",
        0,
        TRAIN,
        HELD_OUT,
        rates={"baseline": rates, "start": {"embedding_lr": 0.01}},
        boosters={"start": token_start},
        same_rate=True,
    )
    # The held-out continuations scored after the training examples in the prompt, on the plain base model.
    context = "my <leap> is red\nthe <leap> sat on the mat\na <leap> is a small thing\n"
    prompted = [TextExample(text=None, prompt=context + e.prompt, completion=e.completion, source="") for e in HELD_OUT]
    assert record["icl"] == pytest.approx(batch_loss(base.model, base.tokenizer, prompted))
    assert record["icl"] != pytest.approx(batch_loss(base.model, base.tokenizer, HELD_OUT))
    tokens = len(base.tokenizer(context, add_special_tokens=False).input_ids)
    assert record["icl_prompt_tokens"] == icl_prompt_tokens(base, TRAIN) == tokens
    entry = record["boosters"]["start"]
    for run in (record["baseline"], entry["own_rate"], entry["same_rate"]):
        curve = {int(step): loss for step, loss in run["curve"].items()}
        at_or_below = [step for step in sorted(curve) if curve[step] <= record["icl"]]
        assert run["icl_step"] == (at_or_below[0] if at_or_below else None)
        # The state the run keeps is its best on its own evaluation (at step 0 or 4), scored on the held-out set.
        assert run["kept_step"] == run["eval_losses"]["best_step"] in (0, 4) and run["kept"] == curve[run["kept_step"]]
        assert run["kept_at_or_below_icl"] == (run["kept"] <= record["icl"])
    assert entry["rates"] == {"embedding_lr": 0.01} and entry["same_rate"]["curve"] != entry["own_rate"]["curve"]


def test_mean_cosine_tells_repeated_vectors_from_distinct_ones() -> None:
    assert mean_cosine(torch.ones(1, 8)) is None
    assert mean_cosine(torch.ones(3, 8)) == pytest.approx(1.0)
    assert mean_cosine(torch.eye(4)) == pytest.approx(0.0)


def test_the_speed_benchmark_times_a_request_with_the_examples_in_the_prompt_against_the_token(tiny) -> None:
    cost = icl_request_cost(tiny, example_tokens=16, data_dir=None, registry=REGISTRY)
    assert cost["shots"] == 4 and cost["prompt_tokens_saved"] > 3 * 16  # four examples of about 16 tokens
    assert cost["prompt_tokens_with_examples"] == cost["prompt_tokens_with_token"] + cost["prompt_tokens_saved"]
    assert cost["request_seconds_with_examples"] > 0 and cost["request_seconds_with_token"] > 0
