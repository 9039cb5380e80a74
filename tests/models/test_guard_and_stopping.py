"""The guarded start (the token is always a candidate and wins unless a booster's start beats it by
more than the evaluation's noise), the warm-up of a predicted start, and jobs that stop when done
(max_steps, the plateau rule, explicit steps honoured)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from models.registry import load_registry
from models.trainer.concept import InitialState
from models.trainer.config import StopRule, TrainConfig
from models.trainer.errors import InvalidConfigError
from models.trainer.guard import Gain, choose_start, describe_scores, paired_gain
from models.trainer.stopping import Plateau, SeededEval, plateaued, split_for_eval
from models.trainer.train import train

REGISTRY = load_registry()


def test_choose_start_takes_the_lowest_score_and_ties_go_to_the_token():
    assert choose_start({"token": 0.2, "booster": 0.1, "booster+lora": 0.15}) == "booster"
    assert choose_start({"token": 0.1, "booster": 0.1}) == "token"
    assert "token 0.10000" in describe_scores("token", {"token": 0.1, "booster": 0.3})


def test_a_candidate_leaves_the_token_only_by_more_than_the_noise_of_the_paired_gain():
    token = torch.tensor([0.10, 0.20, 0.30, 0.40])
    hair = token - torch.tensor([0.002, -0.001, 0.001, 0.0005])  # lower on average, by a hair
    clear = token * 0.9
    gain = paired_gain(token, hair)
    assert 0 < gain.mean < 2.5 * gain.standard_error
    scores = {"token": float(token.mean()), "hair": float(hair.mean()), "clear": float(clear.mean())}
    gains = {"hair": gain, "clear": paired_gain(token, clear)}
    assert scores["hair"] < scores["token"] and choose_start({k: scores[k] for k in ("token", "hair")}) == "hair"
    assert choose_start({k: scores[k] for k in ("token", "hair")}, gains) == "token"  # within the noise
    assert choose_start(scores, gains) == "clear" and gains["clear"].clears()
    # Ties and a candidate that clears the margin but scores no lower still go to the earlier one.
    assert choose_start({"token": 0.1, "a": 0.09, "b": 0.09}, {"a": Gain(0.1, 0.01), "b": Gain(0.1, 0.01)}) == "a"
    kept = describe_scores("token", {k: scores[k] for k in ("token", "hair")}, gains, views="held-back uploads")
    assert "no candidate beat it on held-back uploads by more than 2.5 standard errors" in kept
    assert "closest: hair" in kept
    assert "clear beat the token" in describe_scores("clear", scores, gains, views="augmented views")


def test_the_guard_evaluation_of_few_uploads_scores_their_augmented_views(leap_tiny, concept_images):
    from models.trainer.base_model import load_base, pick_device

    base = load_base(leap_tiny, pick_device("cpu"))
    plain = SeededEval(base, concept_images, resolution=32, prompt="a photo of a {}", seed=0)
    augmented = SeededEval(
        base, concept_images, resolution=32, prompt="a photo of a {}", seed=0, augment=True, flip=True
    )
    assert augmented.rows == plain.rows == 32
    # Mirror images and posterior draws: latents the uploads' own means are not.
    assert not any(torch.allclose(row, mean) for row in augmented.latents for mean in plain.latents)


def test_plateau_rule():
    assert not plateaued([1.0, 0.9, 0.8], patience=3, min_delta=0.005)  # too few evaluations
    assert not plateaued([1.0, 0.9, 0.95, 0.96, 0.85], patience=3, min_delta=0.005)  # still improving
    assert plateaued([1.0, 0.9, 0.9, 0.899, 0.91], patience=3, min_delta=0.005)  # < 0.5% better
    assert not plateaued([1.0, 0.9, 0.9, 0.89, 0.91], patience=3, min_delta=0.005)  # 1.1% better


def test_uploads_of_ten_or_more_hold_some_back_for_the_evaluation(concept_images):
    kept, held, source = split_for_eval(concept_images[:4])
    assert (len(kept), len(held), source) == (4, 4, "training_images")
    kept, held, source = split_for_eval((concept_images * 2)[:10])
    assert (len(kept), len(held), source) == (8, 2, "held_back")


def _word(base, word: str) -> torch.Tensor:
    ids = base.tokenizer(word, add_special_tokens=False).input_ids
    return base.text_encoder.get_input_embeddings().weight[ids[0]].detach().float().cpu()


def _vectors(out_dir) -> torch.Tensor:
    return next(iter(load_file(out_dir / "learned_embeds.safetensors").values()))


def test_guard_starts_from_the_token_when_the_boosters_start_is_worse(leap_tiny, concept_images, tmp_path):
    config = TrainConfig(base_model=leap_tiny, mode="pivotal", init="booster", steps=1, batch_size=2, seed=2)
    starts = {}

    def hook(step, job):
        starts["embedding"] = job.concept.embedding.detach().clone()

    def resolver(base, images, cfg):
        # A booster that gets the colour wrong: the concept is teal, it predicts "yellow".
        return InitialState(embedding=_word(base, "yellow")[None], note="a deliberately bad start")

    result = train(
        config, concept_images, tmp_path, registry=REGISTRY, booster=resolver, eval_hook=hook, eval_steps=(0,)
    )
    scores = result.init_scores
    assert set(scores) == {"token", "booster", "booster/token midpoint"}
    assert scores["token"] < min(scores["booster/token midpoint"], scores["booster"])
    assert result.init_used == "token" and "guarded start: the token: no candidate beat it" in result.init_note
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["init_used"] == "token" and manifest["init_scores"] == scores
    assert "no candidate beat it on augmented views of the uploads" in manifest["init_note"]
    guard = manifest["init_guard"]
    assert guard["winner"] == "token" and guard["evaluated_on"] == "augmented_views" and guard["rows"] == 32
    assert guard["gains"]["booster"]["mean"] < 0
    # It really started from the token: the initializer word's embedding, not the booster's.
    from models.trainer.base_model import load_base, pick_device

    assert torch.allclose(starts["embedding"][0], _word(load_base(leap_tiny, pick_device()), "object"))


@pytest.fixture(scope="module")
def learned(leap_tiny, concept_images, tmp_path_factory) -> torch.Tensor:
    """What 40 steps of textual inversion learn: the start a perfect booster would predict."""
    out_dir = tmp_path_factory.mktemp("learned")
    config = TrainConfig(base_model=leap_tiny, mode="textual_inversion", init="token", steps=40, seed=1)
    result = train(config, concept_images, out_dir, registry=REGISTRY)
    assert result.stop_reason == "steps"
    return _vectors(out_dir)


def test_guard_starts_from_the_booster_when_it_is_better(leap_tiny, concept_images, learned, tmp_path):
    # A "booster" that predicts what 40 steps of textual inversion learn: a better start than the token.
    good = learned

    def resolver(base, images, cfg):
        return [
            InitialState(embedding=_word(base, "yellow")[None], name="bad"),
            InitialState(embedding=good, name="good", note="embedding only"),
        ]

    config = TrainConfig(base_model=leap_tiny, mode="textual_inversion", init="booster", steps=2, batch_size=2)
    result = train(config, concept_images, tmp_path / "out", registry=REGISTRY, booster=resolver)
    scores = result.init_scores
    assert list(scores) == ["token", "bad", "bad/token midpoint", "good", "good/token midpoint"]
    assert choose_start(scores) == "good" and scores["good"] < scores["token"] < scores["bad"]
    assert result.init_used == "booster" and result.init_note.startswith("guarded start: good beat the token")
    assert result.init_note.endswith("; embedding only")
    assert result.manifest["init_guard"]["winner"] == "good" and result.manifest["warmup_steps"] == 5


def test_a_job_without_steps_stops_when_done_and_keeps_its_best_state(leap_tiny, concept_images, tmp_path):
    config = TrainConfig(base_model=leap_tiny, mode="textual_inversion", init="token", max_steps=200, seed=0)
    progress = []
    result = train(config, concept_images, tmp_path, registry=REGISTRY, on_progress=progress.append)
    assert result.stop_reason == "converged" and 0 < result.steps < 200 and len(result.losses) == result.steps
    assert progress[-1].step == result.steps and progress[-1].total == 200
    curve = result.eval_curve
    assert curve[0][0] == 0 and curve[-1][0] == result.steps
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    stopping = manifest["stopping"]
    assert manifest["steps"] == result.steps and manifest["stop_reason"] == "converged"
    assert stopping["curve"] == [list(point) for point in curve]
    assert stopping["best_loss"] == min(loss for _, loss in curve) < curve[0][1]
    assert stopping["evaluated_on"] == "augmented_views" and stopping["eval_images"] == len(concept_images)


def test_max_steps_caps_a_job_that_does_not_converge(leap_tiny, concept_images, tmp_path):
    never = StopRule(eval_every=4, patience=2, min_delta=0.005, min_steps=10_000)
    config = TrainConfig(base_model=leap_tiny, mode="pivotal", init="token", max_steps=12, batch_size=2, stopping=never)
    result = train(config, concept_images, tmp_path, registry=REGISTRY)
    assert result.steps == 12 and result.stop_reason == "max_steps"
    assert [step for step, _ in result.eval_curve] == [0, 4, 6, 8, 12]  # 6: pivotal's phase-1 cap
    assert result.manifest["pivot_step"] == 6


def test_explicit_steps_run_exactly(leap_tiny, concept_images, tmp_path):
    config = TrainConfig(base_model=leap_tiny, mode="pivotal", init="token", steps=7, batch_size=2)
    result = train(config, concept_images, tmp_path, registry=REGISTRY)
    assert result.steps == 7 and result.stop_reason == "steps" and result.eval_curve == []
    assert result.manifest["stopping"] is None and result.manifest["max_steps"] is None


def test_steps_and_max_steps_are_exclusive(leap_tiny):
    with pytest.raises(InvalidConfigError) as error:
        TrainConfig(base_model=leap_tiny, steps=5, max_steps=10).validate()
    assert error.value.field == "max_steps"


def test_a_predicted_start_is_probed_once_and_the_usual_rule_follows():
    rule = StopRule(eval_every=5, patience=3, min_delta=0.005, min_steps=10, probe_steps=4)
    assert not Plateau(rule, 1.0, "start").due(4)  # a token start waits out min_steps
    done = Plateau(rule, 1.0, "start", probe=True)
    assert done.due(4) and done.record(4, 0.996, lambda: "after 4")  # not 0.5% better: done
    assert done.best_state == "after 4" and done.report()["probe_step"] == 4
    worse = Plateau(rule, 1.0, "start", probe=True)
    assert worse.record(4, 1.02, lambda: "after 4") and worse.best_state == "start"
    better = Plateau(rule, 1.0, "start", probe=True)
    assert not better.record(4, 0.9, lambda: "after 4")  # better: trains on
    assert not better.record(5, 0.9, lambda: "after 5")  # by the usual rule: min_steps first
    assert better.record(15, 0.9, lambda: "after 15") is False and better.record(20, 0.9, lambda: "") is True
    assert not Plateau(replace(rule, probe_steps=0), 1.0, "start", probe=True).due(4)


def test_a_booster_start_is_probed_after_four_steps_and_kept_when_they_gain_nothing(
    leap_tiny, concept_images, learned, tmp_path
):
    # A "booster" that predicts what 40 steps of textual inversion learn.
    def resolver(base, images, cfg):
        return InitialState(embedding=learned, name="learned")

    def job(mode: str, rule: StopRule, name: str, warmup_steps: int = 0):
        config = TrainConfig(
            base_model=leap_tiny,
            mode=mode,
            init="booster",
            max_steps=200,
            seed=0,
            stopping=rule,
            warmup_steps=warmup_steps,
        )
        return train(config, concept_images, tmp_path / name, registry=REGISTRY, booster=resolver)

    # With the probe on: where 4 steps gain less than min_delta (here 20%), the job stops and keeps the best.
    demanding = StopRule(min_delta=0.2, probe_steps=4)
    ti = job("textual_inversion", demanding, "ti")
    assert ti.init_used == "booster" and [step for step, _ in ti.eval_curve] == [0, 4]
    assert ti.steps == 4 and ti.stop_reason == "converged" and ti.manifest["stopping"]["probe_step"] == 4
    # It keeps the better of the two (here the 4-step state, less than 20% better than the start).
    assert ti.eval_curve[1][1] < ti.eval_curve[0][1] and ti.manifest["stopping"]["best_step"] == 4
    # Pivotal: the probe ends the embedding phase; LoRA then trains by the usual rule (min_steps 10).
    pivotal = job("pivotal", demanding, "pivotal")
    assert pivotal.manifest["pivot_step"] == 4 and pivotal.steps >= 4 + 10
    # Where they gain more (here 0.1%), the job trains on by the usual rule.
    usual = job("textual_inversion", StopRule(probe_steps=4, min_delta=0.001), "usual")
    assert usual.eval_curve[1][0] == 4 and usual.eval_curve[1][1] < usual.eval_curve[0][1] * 0.999
    assert usual.steps >= 10 and usual.eval_curve[2][0] == 5
    # A token start is not probed: it waits out min_steps, evaluating every 5 steps.
    token = train(
        TrainConfig(base_model=leap_tiny, mode="textual_inversion", init="token", max_steps=200, seed=0),
        concept_images,
        tmp_path / "token",
        registry=REGISTRY,
    )
    assert token.eval_curve[1][0] == 5 and token.manifest["stopping"]["probe_step"] is None
    # By default a booster start is not probed either: it warms up and stops by the token's rule, on
    # its best evaluated state.
    default = job("textual_inversion", StopRule(), "default", warmup_steps=5)
    assert default.init_used == "booster" and default.manifest["stopping"]["probe_step"] is None
    assert default.eval_curve[1][0] == 5 and default.steps >= 15
    assert default.manifest["stopping"]["best_loss"] == min(loss for _, loss in default.eval_curve)


def test_the_guard_keeps_the_token_when_the_predicted_lora_is_worse(leap_tiny, concept_images, tmp_path):
    from peft import get_peft_model_state_dict

    from models.trainer.concept import ADAPTER_NAME

    def resolver(base, images, cfg):
        # The token's own vector with a LoRA that is noise: only the LoRA differs from the token start.
        fresh = get_peft_model_state_dict(base.unet, adapter_name=ADAPTER_NAME)
        generator = torch.Generator().manual_seed(0)
        bad = {key: 0.3 * torch.randn(value.shape, generator=generator) for key, value in fresh.items()}
        return InitialState(embedding=_word(base, "object")[None], unet_lora=bad, note="a deliberately bad LoRA")

    config = TrainConfig(base_model=leap_tiny, mode="pivotal", init="booster", steps=1, batch_size=1)
    result = train(config, concept_images, tmp_path, registry=REGISTRY, booster=resolver)
    scores = result.init_scores
    assert list(scores) == ["token", "booster", "booster+lora", "booster/token midpoint"]
    assert scores["booster+lora"] > scores["token"] == scores["booster"]
    assert result.init_used == "token" and result.manifest["init_guard"]["gains"]["booster+lora"]["mean"] < 0
    assert result.manifest["warmup_steps"] == 0  # a token start runs at full rate


def test_a_booster_reads_only_the_uploads_the_guard_does_not_score_on(leap_tiny, concept_images, tmp_path):
    uploads = (concept_images * 2)[:10]
    read = []

    def resolver(base, images, cfg):
        read.append(len(images))
        return InitialState(embedding=_word(base, "yellow")[None])

    config = TrainConfig(base_model=leap_tiny, mode="textual_inversion", init="booster", steps=1, batch_size=1)
    result = train(config, uploads, tmp_path, registry=REGISTRY, booster=resolver)
    guard = result.manifest["init_guard"]
    assert read == [8] and guard["evaluated_on"] == "held_back" and guard["rows"] == 20  # 2 views x 10 timesteps
    assert "on held-back uploads" in result.init_note


def _first_step(leap_tiny, concept_images, learned, out_dir, warmup_steps: int) -> float:
    """How far one step moves a start the guard took from a booster (largest coordinate change)."""

    def resolver(base, images, cfg):
        return InitialState(embedding=learned, name="learned")

    config = TrainConfig(
        base_model=leap_tiny,
        mode="textual_inversion",
        init="booster",
        steps=1,
        batch_size=2,
        embedding_lr=0.02,
        warmup_steps=warmup_steps,
    )
    result = train(config, concept_images, out_dir, registry=REGISTRY, booster=resolver)
    assert result.init_used == "booster"
    return float((_vectors(out_dir) - learned).abs().max())


def test_a_predicted_start_warms_up_instead_of_taking_full_rate_adam_steps(
    leap_tiny, concept_images, learned, tmp_path
):
    full = _first_step(leap_tiny, concept_images, learned, tmp_path / "full", warmup_steps=0)
    warm = _first_step(leap_tiny, concept_images, learned, tmp_path / "warm", warmup_steps=5)
    # Adam's first step moves every coordinate by about the rate, whatever the gradient's size.
    assert 0.015 < full < 0.025
    assert warm == pytest.approx(full / 5, rel=0.1)


def test_multi_vector_jobs_take_the_boosters_with_a_head_for_their_count(leap_tiny, concept_images):
    from models.booster.resolver import booster_initial_state
    from models.trainer.base_model import load_base, pick_device

    base = load_base(leap_tiny, pick_device("cpu"))

    def names(num_vectors: int) -> list[tuple[str, str]]:
        config = TrainConfig(base_model="leap-tiny", mode="textual_inversion", num_vectors=num_vectors)
        return [
            (state.name, state.note) for state in booster_initial_state(base, concept_images, config, REGISTRY) or []
        ]

    assert [name for name, _ in names(1)] == ["booster", "leap-tiny-world"]
    # leap-tiny's family booster has 2- and 4-vector heads; the world specialist would only copy one vector.
    [(name, note)] = names(2)
    assert name == "booster" and "left out for 2 vectors (no head for that count): leap-tiny-world" in note
    # No booster has a 3-vector head: each offers its copy, and says so.
    three = names(3)
    assert [name for name, _ in three] == ["booster", "leap-tiny-world"]
    assert all("copied into all 3 slots" in note for _, note in three)
