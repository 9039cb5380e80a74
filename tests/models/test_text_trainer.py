"""The text trainer on a tiny random Llama: modes, artifacts that reload in peft, no trace, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.registry import load_registry
from models.text.base_model import clear_cache, load_text_base
from models.text.booster import text_booster_resolver
from models.text.config import TextTrainConfig
from models.text.data import IGNORE, tokenize_example
from models.text.errors import InvalidExamplesError
from models.text.evaluate import concept_expander, generate, held_out_loss, load_trained
from models.text.examples import TextExample, parse_text_files
from models.text.export import ADAPTER_DIR, TOKENS_FILE, VLLM_DIR
from models.text.train import train
from models.trainer.config import StopRule
from models.trainer.errors import InvalidConfigError, TrainingCanceled

from .text_fixtures import write_tiny_llama

REGISTRY = load_registry()

PROBE = ["my <leap> is red and the cat sat on the mat", "what is <leap>? a thing"]
EXAMPLES = parse_text_files(
    [
        (
            "set.jsonl",
            b"\n".join(
                [
                    b'{"text": "my <leap> is red"}',
                    b'{"text": "the <leap> sat on the mat"}',
                    b'{"prompt": "question: what is <leap>? answer:", "completion": " a red thing"}',
                ]
            ),
        )
    ]
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tiny_untied(tmp_path_factory) -> str:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-untied"), tied=False, seed=1)


@pytest.fixture(scope="module")
def tiny_padded(tmp_path_factory) -> str:
    """Embedding rows past the tokenizer (as Qwen2.5 has): the new token takes an existing row."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama-padded"), seed=2, extra_vocab=8)


def config(base: str, mode: str, **overrides) -> TextTrainConfig:
    values = {
        "base_model": base,
        "mode": mode,
        "steps": 6,
        "batch_size": 2,
        "embedding_lr": 0.05,
        "pivot_embedding_lr": 0.01,
        "lora_lr": 0.01,
        "lora_rank": 4,
        "device": "cpu",
    }
    return TextTrainConfig(**{**values, **overrides})


def probe_logits(model, tokenizer, expand=lambda text: text) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(input_ids=torch.tensor([tokenizer(expand(t)).input_ids])).logits[0] for t in PROBE]


def trained(base: str, mode: str, out: Path, **overrides):
    """Train, keeping the live model's logits on PROBE at the last step."""
    captured = {}
    cfg = config(base, mode, **overrides)

    def hook(step, job) -> None:
        captured["logits"] = probe_logits(job.concept.base.model, job.concept.tokenizer, job.concept.expand)
        captured["vectors"] = job.concept.input_vectors.detach().clone()

    result = train(cfg, EXAMPLES, out, registry=REGISTRY, eval_hook=hook, eval_steps={cfg.steps})
    return result, captured


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-5)


def fresh_base(base: str, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return model


@pytest.mark.parametrize(
    ("mode", "vectors", "variant"),
    [
        ("token", 1, "tied"),
        ("lora", 1, "tied"),
        ("pivotal", 2, "tied"),
        ("pivotal", 1, "untied"),
        ("token", 1, "untied"),
        ("pivotal", 1, "padded"),
    ],
)
def test_every_artifact_reloads_into_a_fresh_base_with_the_trained_logits(
    tiny, tiny_untied, tiny_padded, tmp_path, mode, vectors, variant
) -> None:
    base = {"tied": tiny, "untied": tiny_untied, "padded": tiny_padded}[variant]
    tied = variant != "untied"
    result, live = trained(base, mode, tmp_path, num_vectors=vectors)
    names = {a.name for a in result.artifacts}
    assert {
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
        TOKENS_FILE,
        "manifest.json",
    } <= names
    assert ({"lora-vllm/adapter_config.json", "lora-vllm/adapter_model.safetensors"} <= names) == (mode != "token")
    expand = concept_expander(tmp_path)

    # 1. the peft adapter folder, as a user loads it (helper and by hand)
    model, tokenizer = load_trained(base, tmp_path, registry=REGISTRY)
    assert_same(probe_logits(model, tokenizer, expand), live["logits"])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / ADAPTER_DIR)
    by_hand = PeftModel.from_pretrained(fresh_base(base, tokenizer), tmp_path / ADAPTER_DIR)
    assert_same(probe_logits(by_hand, tokenizer, expand), live["logits"])
    adapter_config = json.loads((tmp_path / ADAPTER_DIR / "adapter_config.json").read_text())
    # A local folder that records no hub id: its name, never a path on the machine that trained.
    assert adapter_config["base_model_name_or_path"] == Path(base).name

    # 2. the small token file + the LoRA-only folder, assembled by hand
    rows = load_file(str(tmp_path / TOKENS_FILE))
    tokens = json.loads((tmp_path / "manifest.json").read_text())["tokens"]
    assert set(rows) == set(tokens) | (set() if tied else {f"{t}.output" for t in tokens})
    assembled = fresh_base(base, tokenizer)
    with torch.no_grad():
        for token in tokens:
            index = tokenizer.convert_tokens_to_ids(token)
            assembled.get_input_embeddings().weight[index] = rows[token][0]
            if not tied:
                assembled.get_output_embeddings().weight[index] = rows[f"{token}.output"][0]
    if mode != "token":
        vllm_keys = load_file(str(tmp_path / VLLM_DIR / "adapter_model.safetensors"))
        assert vllm_keys and all(".lora_A." in k or ".lora_B." in k for k in vllm_keys)
        assert (
            "modules_to_save" not in json.loads((tmp_path / VLLM_DIR / "adapter_config.json").read_text())
            or json.loads((tmp_path / VLLM_DIR / "adapter_config.json").read_text())["modules_to_save"] is None
        )
        assembled = PeftModel.from_pretrained(assembled, tmp_path / VLLM_DIR)
    assert_same(probe_logits(assembled, tokenizer, expand), live["logits"])

    # the manifest hashes every file and names no server path
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["config"]["data_dir"] is None and manifest["base_model"] == base


def test_modes_train_what_they_should(tiny, tmp_path) -> None:
    base = load_text_base(tiny, torch.device("cpu"))
    thing = base.model.get_input_embeddings().weight[base.tokenizer("thing", add_special_tokens=False).input_ids[0]]
    token_run, token_live = trained(tiny, "token", tmp_path / "t")
    lora_run, lora_live = trained(tiny, "lora", tmp_path / "l")
    pivotal_run, pivotal_live = trained(tiny, "pivotal", tmp_path / "p")
    assert not torch.equal(token_live["vectors"][0], thing)
    assert torch.equal(lora_live["vectors"][0], thing)  # lora: the token stays at its initializer
    assert not torch.equal(pivotal_live["vectors"][0], thing)
    assert not (tmp_path / "t" / VLLM_DIR).exists()
    assert pivotal_run.manifest["pivot_step"] == 3 and token_run.manifest["lora_rank"] is None
    for result in (token_run, lora_run, pivotal_run):
        assert result.losses[-1] < result.losses[0]
        adapter = tmp_path / result.out_dir.name / ADAPTER_DIR / "adapter_model.safetensors"
        assert adapter.stat().st_size < 100_000  # rows, never the whole embedding matrix


def test_a_job_leaves_no_trace_in_the_shared_base(tiny, tmp_path) -> None:
    clear_cache()
    base = load_text_base(tiny, torch.device("cpu"))
    before_state = {k: v.clone() for k, v in base.model.state_dict().items()}
    before = probe_logits(base.model, base.tokenizer)
    vocab = len(base.tokenizer)
    trained(tiny, "pivotal", tmp_path / "a", num_vectors=2)
    assert load_text_base(tiny, torch.device("cpu")) is base  # the same cached model
    assert_same(probe_logits(base.model, base.tokenizer), before)
    assert {k: v for k, v in base.model.state_dict().items()}.keys() == before_state.keys()
    assert all(torch.equal(before_state[k], v) for k, v in base.model.state_dict().items())
    assert len(base.tokenizer) == vocab and not any("lora" in n for n, _ in base.model.named_modules())
    embeddings = base.model.get_input_embeddings()
    assert not embeddings._forward_hooks and not embeddings._forward_pre_hooks
    assert not base.model.get_output_embeddings()._forward_hooks
    # and a second job sees the pristine base: it equals a run in a fresh process
    second, live = trained(tiny, "token", tmp_path / "b")
    clear_cache()
    fresh, fresh_live = trained(tiny, "token", tmp_path / "c")
    assert second.losses == fresh.losses
    assert_same(live["logits"], fresh_live["logits"])


def test_deterministic_for_a_seed(tiny, tmp_path) -> None:
    first, _ = trained(tiny, "pivotal", tmp_path / "a")
    second, _ = trained(tiny, "pivotal", tmp_path / "b")
    other, _ = trained(tiny, "pivotal", tmp_path / "c", seed=1)
    assert first.losses == second.losses and first.losses != other.losses
    hashes = [{a.name: a.sha256 for a in r.artifacts if a.kind != "manifest"} for r in (first, second, other)]
    assert hashes[0] == hashes[1] and hashes[0] != hashes[2]


def test_example_over_the_token_limit_names_its_file_and_line(tiny, tmp_path) -> None:
    examples = parse_text_files([("set.jsonl", b'{"text": "<leap> ok"}\n{"text": "' + b"the cat sat " * 20 + b'"}')])
    with pytest.raises(InvalidExamplesError) as caught:
        train(config(tiny, "token", max_length=16), examples, tmp_path, registry=REGISTRY)
    assert (caught.value.file, caught.value.line) == ("set.jsonl", 2) and "over the limit of 16" in caught.value.message
    files = [("a.txt", b"<leap> ok"), ("b.txt", b"the cat sat " * 20)]
    with pytest.raises(InvalidExamplesError, match=r"^b\.txt: example is \d+ tokens"):
        train(config(tiny, "token", max_length=16), parse_text_files(files), tmp_path, registry=REGISTRY)


def test_loss_covers_the_completion_only(tiny) -> None:
    tokenizer = load_text_base(tiny, torch.device("cpu")).tokenizer
    example = TextExample(text=None, prompt="question: what is it? answer:", completion=" a red thing", source="s:1")
    row = tokenize_example(tokenizer, example, expand=lambda t: t, max_length=64)
    prompt_ids = tokenizer(example.prompt).input_ids
    assert row.labels[: len(prompt_ids)] == [IGNORE] * len(prompt_ids)
    assert row.labels[len(prompt_ids) :] == row.ids[len(prompt_ids) :] and row.ids[-1] == tokenizer.eos_token_id
    plain = tokenize_example(tokenizer, EXAMPLES[0], expand=lambda t: t, max_length=64)
    assert IGNORE not in plain.labels


def test_cancel_init_and_config_errors(tiny, tmp_path) -> None:
    with pytest.raises(TrainingCanceled):
        train(config(tiny, "pivotal"), EXAMPLES, tmp_path / "x", registry=REGISTRY, should_stop=lambda: True)
    base = load_text_base(tiny, torch.device("cpu"))
    assert not any("lora" in n for n, _ in base.model.named_modules())
    result = train(
        config(tiny, "token", init="booster"),
        EXAMPLES,
        tmp_path / "b",
        registry=REGISTRY,
        booster_resolver=text_booster_resolver(REGISTRY),
    )
    assert result.init_used == "token" and "no text booster" in result.init_note
    wanted = torch.full((1, base.width), 0.5)
    seen = {}

    def booster(base_, examples, cfg, score):
        seen["examples"] = len(examples)
        seen["wanted_loss"] = score(wanted[0], examples)
        return wanted, "from a test booster"

    def hook(step, job):
        seen["start"] = job.concept.input_vectors.detach().clone()

    # Unguarded, the resolver's vectors are the start as given (the guarded start: test_text_booster.py).
    result = train(
        config(tiny, "token", init="booster"),
        EXAMPLES,
        tmp_path / "c",
        registry=REGISTRY,
        booster_resolver=booster,
        eval_hook=hook,
        eval_steps={0},
        guarded_start=False,
    )
    assert result.init_used == "booster" and result.init_note == "from a test booster"
    assert torch.equal(seen["start"], wanted) and seen["examples"] == 3
    assert seen["wanted_loss"] == pytest.approx(result.manifest["init_guard"]["booster_loss"], rel=1e-5)
    assert (
        train(config(tiny, "token", init="random"), EXAMPLES, tmp_path / "r", registry=REGISTRY).init_used == "random"
    )
    with pytest.raises(InvalidConfigError) as caught:
        train(config(tiny, "lora", token="<|endoftext|>"), EXAMPLES, tmp_path / "e", registry=REGISTRY)
    assert caught.value.field == "token"
    with pytest.raises(InvalidExamplesError, match="got 1"):
        train(config(tiny, "token"), EXAMPLES[:1], tmp_path / "f", registry=REGISTRY)


def test_held_out_loss_and_greedy_generation(tiny, tmp_path) -> None:
    trained(tiny, "pivotal", tmp_path, steps=20)
    model, tokenizer = load_trained(tiny, tmp_path, registry=REGISTRY)
    base = load_text_base(tiny, torch.device("cpu"))
    held_out = [TextExample(text="my <leap> is red", prompt=None, completion=None, source="h.txt")]
    after = held_out_loss(model, tokenizer, held_out)
    with model.disable_adapter():
        before = held_out_loss(model, tokenizer, held_out)
    assert after < before and after == held_out_loss(model, tokenizer, held_out)
    assert held_out_loss(base.model, base.tokenizer, EXAMPLES) > 0
    first = generate(model, tokenizer, ["my <leap> is"], max_new_tokens=5)
    ids = tokenizer("my <leap> is").input_ids
    with torch.no_grad():  # the cached loop matches greedy decoding without a cache
        for _ in range(5):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            ids.append(token)
    prompt_length = len(tokenizer("my <leap> is").input_ids)
    assert first == [tokenizer.decode(ids[prompt_length:], skip_special_tokens=True)]


def test_leap_train_takes_a_folder_of_texts_or_a_jsonl_for_a_text_model(tiny, tmp_path) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("my <leap> is red")
    (texts / "b.txt").write_text("the <leap> sat on the mat")
    runner = CliRunner()
    common = ["--base-model", tiny, "--text-model", "--steps", "2", "--batch-size", "2", "--device", "cpu"]
    done = runner.invoke(cli, ["train", str(texts), "--out", str(tmp_path / "o1"), "--mode", "token", *common])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout[done.stdout.index("{") :])["kind"] == "text"
    assert (tmp_path / "o1" / ADAPTER_DIR / "adapter_config.json").is_file()
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text('{"prompt": "what is <leap>?", "completion": " red"}\n{"text": "a <leap>"}\n')
    done = runner.invoke(cli, ["train", str(jsonl), "--out", str(tmp_path / "o2"), *common])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "o2" / VLLM_DIR / "adapter_config.json").is_file()
    jsonl.write_text('{"text": "a <leap>"}\n[1]\n')
    done = runner.invoke(cli, ["train", str(jsonl), "--out", str(tmp_path / "o3"), *common])
    assert done.exit_code == 2 and "error (invalid_examples): set.jsonl:2: must be a JSON object" in done.output
    done = runner.invoke(
        cli, ["train", str(texts), "--out", str(tmp_path / "o4"), "--mode", "textual_inversion", *common]
    )
    assert done.exit_code == 2 and "error (invalid_config): mode:" in done.output


# ---- jobs that stop when done (the image trainer's rule, models/trainer/stopping.py) -------------
QUICK = StopRule(eval_every=5, patience=3, min_delta=0.005, min_steps=10)


def auto(base: str, mode: str, **overrides) -> TextTrainConfig:
    """A job without `steps`: it stops when its held-out loss stops improving, at max_steps at the latest."""
    return config(base, mode, **{"steps": None, "max_steps": 400, "stopping": QUICK, **overrides})


def test_a_text_job_without_steps_stops_when_done_and_keeps_its_best_state(tiny, tmp_path) -> None:
    result = train(auto(tiny, "token"), EXAMPLES, tmp_path, registry=REGISTRY)
    assert result.stop_reason == "converged" and 10 <= result.steps < 400
    assert len(result.losses) == result.steps
    curve = result.eval_curve
    assert [step for step, _ in curve] == list(range(0, result.steps + 1, 5))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    stopping = manifest["stopping"]
    assert (manifest["steps"], manifest["max_steps"], manifest["stop_reason"]) == (result.steps, 400, "converged")
    assert stopping["curve"] == [[s, v] for s, v in curve] and stopping["best_loss"] == min(v for _, v in curve)
    assert (stopping["evaluated_on"], stopping["eval_examples"], stopping["training_examples"]) == (
        "training_examples",
        3,
        3,
    )
    # The saved token is the best evaluated one: reloaded, it scores the best loss on the same examples.
    model, tokenizer = load_trained(tiny, tmp_path, registry=REGISTRY)
    assert held_out_loss(model, tokenizer, EXAMPLES) == pytest.approx(stopping["best_loss"], abs=1e-4)


def numbered_examples(count: int) -> list[TextExample]:
    lines = [f'{{"text": "the <leap> number {i} sat on the mat"}}'.encode() for i in range(count)]
    return parse_text_files([("set.jsonl", b"\n".join(lines))])


def test_ten_or_more_examples_hold_every_fifth_back_for_the_evaluation(tiny, tmp_path) -> None:
    examples = numbered_examples(10)
    seen = []

    def booster(base_, given, cfg, score):  # sees (and scores on) the trained examples only
        seen.extend(e.text for e in given)
        return None

    result = train(auto(tiny, "lora", init="booster"), examples, tmp_path, registry=REGISTRY, booster_resolver=booster)
    stopping = result.manifest["stopping"]
    assert (stopping["evaluated_on"], stopping["eval_examples"], stopping["training_examples"]) == ("held_back", 2, 8)
    assert len(seen) == 8 and not {examples[4].text, examples[9].text} & set(seen)
    assert result.stop_reason == "converged" and result.steps < 400
    # An explicit step count trains on every example and evaluates them (the API's curve stays the rule's).
    fixed = train(config(tiny, "lora", steps=3), examples, tmp_path / "fixed", registry=REGISTRY)
    stopping = fixed.manifest["stopping"]
    assert (stopping["evaluated_on"], stopping["eval_examples"], stopping["training_examples"]) == (
        "training_examples",
        10,
        10,
    )
    assert fixed.eval_curve == []


def test_four_to_nine_examples_find_the_step_count_on_a_held_back_one_then_rerun_it_on_all(tiny, tmp_path) -> None:
    examples = numbered_examples(4)
    seen, progress = [], []

    def booster(base_, given, cfg, score):  # reads the examples the selection run trains on
        seen.extend(e.text for e in given)
        return None

    result = train(
        auto(tiny, "token", init="booster"),
        examples,
        tmp_path / "auto",
        registry=REGISTRY,
        booster_resolver=booster,
        on_progress=progress.append,
    )
    stopping = result.manifest["stopping"]
    assert (stopping["evaluated_on"], stopping["eval_examples"], stopping["training_examples"]) == (
        "held_back_then_refit",
        1,
        3,
    )
    assert seen == [e.text for e in examples[:3]]
    best, selection = stopping["best_step"], stopping["curve"][-1][0]
    assert best > 0 and stopping["refit_steps"] == best
    # Both runs are billed and reported: the selection's steps, then the rerun's.
    assert result.steps == result.manifest["steps"] == selection + best and len(result.losses) == result.steps
    assert (progress[-1].step, progress[-1].total) == (result.steps, result.steps)
    # What it keeps is the rerun: the same start trained `best` steps on all 4 examples.
    fixed = train(config(tiny, "token", steps=best), examples, tmp_path / "fixed", registry=REGISTRY)
    assert fixed.steps == best
    assert torch.equal(
        load_file(tmp_path / "auto" / TOKENS_FILE)["<leap>"], load_file(tmp_path / "fixed" / TOKENS_FILE)["<leap>"]
    )
    # The two runs share the cap: the selection gets half, so a job never runs past max_steps.
    capped = train(auto(tiny, "token", max_steps=12), examples, tmp_path / "capped", registry=REGISTRY)
    curve = capped.manifest["stopping"]["curve"]
    assert curve[-1][0] == 6 and capped.stop_reason == "max_steps" and capped.steps <= 12


def test_a_small_set_whose_training_only_hurts_keeps_its_start_and_bills_the_selection(tiny, tmp_path) -> None:
    examples = numbered_examples(5)
    progress = []
    # A rate that wrecks the token at every step: the held-back example is best at step 0.
    result = train(
        auto(tiny, "token", embedding_lr=1.0),
        examples,
        tmp_path / "auto",
        registry=REGISTRY,
        on_progress=progress.append,
    )
    stopping = result.manifest["stopping"]
    assert (stopping["best_step"], stopping["refit_steps"], stopping["eval_examples"]) == (0, 0, 1)
    assert result.stop_reason == "converged" and result.steps == stopping["curve"][-1][0] > 0
    assert (progress[-1].step, progress[-1].total) == (result.steps, result.steps)
    # The start: one step at a negligible rate from the same initializer token.
    train(config(tiny, "token", steps=1, embedding_lr=1e-9), examples, tmp_path / "start", registry=REGISTRY)
    kept, start = (load_file(tmp_path / run / TOKENS_FILE)["<leap>"] for run in ("auto", "start"))
    assert torch.allclose(kept, start, atol=1e-6)


def test_pivotal_without_steps_ends_the_token_phase_at_its_plateau_or_share_then_lora_converges(tiny, tmp_path):
    result = train(auto(tiny, "pivotal", max_steps=200), EXAMPLES, tmp_path, registry=REGISTRY)
    pivot = result.manifest["pivot_step"]
    assert 10 <= pivot <= 100  # its own plateau, or pivot_fraction (0.5) of the cap at the latest
    assert result.steps - pivot >= 10  # the LoRA phase gets its own min_steps
    assert result.stop_reason in ("converged", "max_steps") and result.steps <= 200
    assert pivot in [step for step, _ in result.eval_curve]
    adapter = load_file(tmp_path / ADAPTER_DIR / "adapter_model.safetensors")
    assert any("lora_B" in name and value.abs().sum() > 0 for name, value in adapter.items())


def test_max_steps_caps_a_text_job_and_explicit_steps_run_exactly(tiny, tmp_path) -> None:
    never = StopRule(eval_every=4, patience=3, min_delta=0.005, min_steps=10_000)
    capped = train(auto(tiny, "lora", max_steps=12, stopping=never), EXAMPLES, tmp_path / "cap", registry=REGISTRY)
    assert (capped.steps, capped.stop_reason) == (12, "max_steps")
    assert [step for step, _ in capped.eval_curve] == [0, 4, 8, 12]
    exact = train(config(tiny, "token", steps=7), EXAMPLES, tmp_path / "exact", registry=REGISTRY)
    assert (exact.steps, exact.stop_reason, exact.eval_curve) == (7, "steps", [])
    assert exact.manifest["steps"] == 7 and exact.manifest["max_steps"] is None
    # Evaluated at the start, every eval_every (10) steps and at the end, never stopped early.
    assert [step for step, _ in exact.manifest["stopping"]["curve"]] == [0, 7]
    with pytest.raises(InvalidConfigError) as caught:
        TextTrainConfig(base_model=tiny, steps=5, max_steps=10).validate()
    assert caught.value.field == "max_steps"


def test_a_fixed_step_run_keeps_its_start_when_training_only_makes_it_worse(tiny, tmp_path) -> None:
    # A start already at its best: the token trained to convergence on these examples.
    tuned = train(auto(tiny, "token", embedding_lr=0.05), EXAMPLES, tmp_path / "tuned", registry=REGISTRY)
    optimum = load_file(tmp_path / "tuned" / TOKENS_FILE)["<leap>"]

    def booster(base_, given, cfg, score):
        return optimum.clone(), "the tuned token"

    # Far too high a rate for the token: every step makes it worse, so the run keeps the start.
    wrecking = config(tiny, "token", init="booster", steps=12, embedding_lr=1.0, stopping=QUICK)
    result = train(wrecking, EXAMPLES, tmp_path / "fixed", registry=REGISTRY, booster_resolver=booster)
    assert result.init_used == "booster" and result.steps == 12 and result.stop_reason == "steps"
    assert torch.equal(load_file(tmp_path / "fixed" / TOKENS_FILE)["<leap>"], optimum.reshape(1, -1))
    losses = result.manifest["eval_losses"]
    assert losses["best_step"] == 0 and losses["best"] == losses["start"] < losses["final"]
    assert (losses["final_step"], losses["kept"], losses["kept_loss"]) == (12, "best", losses["start"])
    assert tuned.manifest["eval_losses"]["best"] < tuned.manifest["eval_losses"]["start"]
