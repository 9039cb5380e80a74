import pytest
import torch
import yaml

from models.booster.resolver import booster_initial_state, predict, registered_booster
from models.booster.train_booster import make_booster
from models.registry import load_registry
from models.trainer.base_model import load_base, pick_device
from models.trainer.config import TrainConfig
from models.trainer.errors import BaseModelError
from models.trainer.train import train

REGISTRY = load_registry()


@pytest.fixture()
def tiny_booster(random_tiny, tmp_path):
    """A (briefly perturbed) booster for random_tiny, registered in tmp_path/registry.yaml."""
    base = load_base(random_tiny, pick_device("cpu"))
    booster = make_booster(base, "random-tiny", rank=4, image_size=32)
    with torch.no_grad():
        booster.lora_mean.normal_(0, 0.01)
        booster.embedding_head.bias.add_(0.5)
    booster.save(tmp_path / "booster")
    registry = {
        "default": "random-tiny",
        "models": {"random-tiny": {"path": random_tiny, "resolution": 32, "booster": str(tmp_path / "booster")}},
    }
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(registry))
    return booster


def test_booster_is_order_invariant_over_the_image_set(tiny_booster, concept_images):
    forward, _, _ = predict(tiny_booster, concept_images)
    backward, _, _ = predict(tiny_booster, list(reversed(concept_images)))
    torch.testing.assert_close(forward, backward, atol=1e-5, rtol=1e-5)


def test_pivotal_starts_from_the_booster_prediction(tiny_booster, random_tiny, concept_images, tmp_path):
    """The booster's embedding + LoRA reach the trainer as candidates; the job starts from the guard's winner."""
    from safetensors.torch import load_file

    from models.booster.apply import word_embedding

    config = TrainConfig(
        base_model="random-tiny",
        mode="pivotal",
        init="booster",
        steps=1,
        batch_size=1,
        embedding_lr=1e-9,
        lora_lr=1e-9,
        pivot_embedding_lr=1e-9,
    )
    registry = load_registry(tmp_path / "registry.yaml")
    result = train(config, concept_images, tmp_path / "out", registry=registry, booster=registered_booster(registry))
    embedding, lora, _ = predict(tiny_booster, concept_images)
    base = load_base(random_tiny, pick_device("cpu"))
    token = word_embedding(base)[None]
    starts = {
        "token": token,
        "booster": embedding,
        "booster+lora": embedding,
        "booster/token midpoint": 0.5 * (token + embedding),
    }
    assert set(result.init_scores) == set(starts)
    winner = min(result.init_scores, key=result.init_scores.__getitem__)
    saved = load_file(str(tmp_path / "out" / "learned_embeds.safetensors"))["<leap>"]
    torch.testing.assert_close(saved, starts[winner], atol=1e-5, rtol=0)
    [state] = booster_initial_state(base, concept_images, config, registry) or []
    assert state.unet_lora is not None
    assert set(state.unet_lora) == set(lora)


def test_a_different_lora_rank_uses_the_embedding_only(tiny_booster, random_tiny, concept_images, tmp_path):
    config = TrainConfig(base_model="random-tiny", mode="lora", init="booster", steps=1, batch_size=1, lora_rank=8)
    registry = load_registry(tmp_path / "registry.yaml")
    result = train(config, concept_images, tmp_path, registry=registry, booster=registered_booster(registry))
    assert result.init_scores and "embedding only" in result.init_note or result.init_used == "token"
    [state] = booster_initial_state(load_base(random_tiny, pick_device("cpu")), concept_images, config, registry) or []
    assert state is not None and state.unet_lora is None and state.note.startswith("embedding only")


def test_multi_vector_jobs_get_distinct_predicted_vectors_or_a_plain_note(random_tiny, concept_images, tmp_path):
    """A count with its own head gets that many distinct vectors; any other count is told it got copies."""
    from dataclasses import replace

    base = load_base(random_tiny, pick_device("cpu"))
    booster = make_booster(base, "random-tiny", rank=4, image_size=32, vector_heads=[2])
    with torch.no_grad():
        booster.vector_heads["2"].bias.normal_(0, 0.5)
    booster.save(tmp_path / "booster")
    registry = {
        "default": "random-tiny",
        "models": {"random-tiny": {"path": random_tiny, "resolution": 32, "booster": str(tmp_path / "booster")}},
    }
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(registry))
    registered = load_registry(tmp_path / "registry.yaml")

    two, _, note = predict(booster, concept_images, 2)
    assert two.shape == (2, base.embedding_width) and not note
    assert (two[0] - two[1]).abs().max() > 1e-2
    config = TrainConfig(base_model="random-tiny", mode="textual_inversion", init="booster", num_vectors=2)
    [state] = booster_initial_state(base, concept_images, config, registered) or []
    assert "copied" not in state.note
    torch.testing.assert_close(state.embedding, two)

    config.num_vectors = 3
    [state] = booster_initial_state(base, concept_images, config, registered) or []
    assert "distinct vectors for 1, 2 vector(s) only" in state.note and "all 3 slots" in state.note
    one, _, _ = predict(booster, concept_images, 1)
    torch.testing.assert_close(state.embedding, one.repeat(3, 1))
    # The job runs from it (the trainer's guard may still prefer the token; either way it trains).
    result = train(
        replace(config, steps=1, batch_size=1),
        concept_images,
        tmp_path / "three",
        registry=registered,
        booster=registered_booster(registered),
    )
    assert result.init_used in ("booster", "token")


def test_a_registry_may_list_several_boosters_and_the_guard_scores_each(
    tiny_booster, random_tiny, concept_images, tmp_path
):
    second = make_booster(load_base(random_tiny, pick_device("cpu")), "random-tiny", rank=4, image_size=32)
    with torch.no_grad():
        second.embedding_head.bias.sub_(0.5)
    second.save(tmp_path / "second")
    folders = [str(tmp_path / "booster"), str(tmp_path / "second")]
    registry = {
        "default": "random-tiny",
        "models": {"random-tiny": {"path": random_tiny, "resolution": 32, "booster": folders}},
    }
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(registry))
    registered = load_registry(tmp_path / "two.yaml")
    assert registered.get("random-tiny").booster_path == tmp_path / "booster"  # the main one (text models use it)
    config = TrainConfig(base_model="random-tiny", mode="textual_inversion", init="booster", steps=1, batch_size=1)
    result = train(
        config, concept_images, tmp_path / "out", registry=registered, booster=registered_booster(registered)
    )
    assert list(result.init_scores) == ["token", "booster", "booster/token midpoint", "second", "second/token midpoint"]
    assert result.init_note.startswith("guarded start: ")
    assert result.manifest["init_guard"]["winner"] in result.init_scores


def test_a_booster_for_another_base_model_fails_clearly(tiny_booster, leap_tiny, concept_images, tmp_path):
    registry = {
        "default": "leap-tiny",
        "models": {
            "leap-tiny": {"path": leap_tiny, "resolution": 32, "booster": str(tmp_path.parent / "booster-elsewhere")}
        },
    }
    tiny_booster.save(tmp_path.parent / "booster-elsewhere")
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(registry))
    wrong = load_registry(tmp_path / "wrong.yaml")
    config = TrainConfig(base_model="leap-tiny", mode="textual_inversion", init="booster", steps=1, batch_size=1)
    with pytest.raises(BaseModelError, match="trained for another base model"):
        train(config, concept_images, tmp_path / "out", registry=wrong, booster=registered_booster(wrong))


def test_the_committed_leap_tiny_booster_fits_leap_tiny_and_reads_the_images(leap_tiny):
    """The shipped booster loads for leap-tiny, is small, and predicts different starts for different concepts.

    Whether it speeds training up is measured by models.booster.benchmark, not here."""
    from pathlib import Path

    from models.booster.resolver import checked_booster, registered_booster_path, registered_booster_paths
    from models.reference.concepts import benchmark_concepts

    base = load_base(leap_tiny, pick_device("cpu"))
    directory = registered_booster_path(base, REGISTRY)
    assert directory is not None
    folders = registered_booster_paths(base, REGISTRY)
    assert folders[0] == directory and [folder.name for folder in folders] == ["leap-tiny", "leap-tiny-world"]
    assert sum(p.stat().st_size for folder in folders for p in Path(folder).iterdir()) <= 10 * 2**20
    booster = checked_booster(directory, base, REGISTRY)
    first, second = benchmark_concepts("dev")[:2]
    config = TrainConfig(base_model="leap-tiny", mode="pivotal")
    state_a, world_a = booster_initial_state(base, first.views(), config, REGISTRY) or []
    state_b, world_b = booster_initial_state(base, second.views(), config, REGISTRY) or []
    # The guard scores both: the family-trained booster as "booster", the world specialist by its folder.
    assert (state_a.name, world_a.name) == ("booster", "leap-tiny-world")
    assert world_a.unet_lora is None and world_a.note.startswith("embedding only: the world specialist")
    assert (world_a.embedding - world_b.embedding).abs().max() > 1e-3
    assert (world_a.embedding - state_a.embedding).abs().max() > 1e-3
    assert torch.isfinite(state_a.embedding).all()
    assert (state_a.embedding - state_b.embedding).abs().max() > 1e-3
    # The family-trained booster predicts B on the base model's fixed A; the world specialist has no LoRA
    # head, so its start trains from the same A with B = 0.
    assert booster.config.use_lora and state_a.unet_lora is not None and state_b.unet_lora is not None
    assert world_a.fresh_unet_lora is not None
    for key, value in state_a.unet_lora.items():
        if ".lora_A." in key:
            assert torch.equal(value, world_a.fresh_unet_lora[key])
    assert any((state_a.unet_lora[k] - state_b.unet_lora[k]).abs().max() > 1e-4 for k in state_a.unet_lora)
    # Distinct vectors for 1, 2 and 4; other counts are told they get copies.
    assert booster.supported_vectors() == [1, 2, 4]
    # The world specialist has no 4-vector head: a 4-vector job leaves it out rather than copy one vector.
    [four] = booster_initial_state(base, first.views(), TrainConfig(base_model="leap-tiny", num_vectors=4), REGISTRY)
    assert four.embedding.shape == (4, 64) and "copied" not in four.note and "leap-tiny-world" in four.note
    assert (four.embedding[0] - four.embedding[3]).abs().max() > 1e-3


def test_the_committed_booster_starts_closer_to_the_optimum_than_the_token(leap_tiny):
    """On development concepts (never trained on, never benchmarked: world dev concepts and new concepts of
    training families), the booster's embedding has a lower held-out loss than the initializer token on
    average; the speed-up, and the held-out families, are benchmarked (models.booster.benchmark)."""
    from models.booster.apply import word_embedding
    from models.booster.benchmark import FAMILY_SEED, family_items, world_items
    from models.booster.resolver import checked_booster, registered_booster_path
    from models.trainer.concept import ConceptModel, InitialState
    from models.trainer.evaluate import HeldOutLoss

    base = load_base(leap_tiny, pick_device("cpu"))
    directory = registered_booster_path(base, REGISTRY)
    assert directory is not None
    booster = checked_booster(directory, base, REGISTRY)

    def held_out(item, state: InitialState) -> float:
        concept = ConceptModel(base, token="<probe>", num_vectors=1)
        try:
            concept.init_from_state(state)
            return HeldOutLoss(base, item.held_out)(concept)
        finally:
            concept.close()

    def ratios(items) -> list[float]:
        found = []
        for item in items:
            embedding, _, _ = predict(booster, item.views)
            token = held_out(item, InitialState(embedding=word_embedding(base)[None]))
            found.append(held_out(item, InitialState(embedding=embedding)) / token)
        return found

    world = ratios(world_items("dev", 3))  # measured: 0.86, 0.92, 0.90 of the token's held-out loss
    assert sum(world) / len(world) < 0.95, world
    # New concepts of training families: measured 0.94, 1.29 (a two-colour shape: the booster extrapolates
    # badly there, which the trainer's guarded start catches), 1.00; most start better than the token.
    families = ratios(family_items(["noise", "twocolour", "stripes"], 1, FAMILY_SEED + 1, "dev"))
    assert sum(r < 1.0 for r in families) >= 2, families


def test_fitted_targets_lower_the_held_out_loss_and_the_prior_keeps_them_near_the_init(leap_tiny):
    """Batched textual inversion (the booster's regression targets) does what a single job does."""
    from models.booster.apply import word_embedding
    from models.booster.targets import fit_embeddings
    from models.reference.concepts import benchmark_concepts
    from models.trainer.concept import ConceptModel, InitialState
    from models.trainer.evaluate import HeldOutLoss

    base = load_base(leap_tiny, pick_device("cpu"))
    items = benchmark_concepts("dev")[:2]
    fitted, losses = fit_embeddings(base, [item.views() for item in items], steps=60, lr=0.02)
    assert fitted.shape == (2, base.embedding_width) and len(losses) == 2

    def held_out(item, vector: torch.Tensor) -> float:
        concept = ConceptModel(base, token="<probe>", num_vectors=1)
        try:
            concept.init_from_state(InitialState(embedding=vector[None]))
            return HeldOutLoss(base, item.held_out_views())(concept)
        finally:
            concept.close()

    start = word_embedding(base)
    for item, vector in zip(items, fitted, strict=True):
        assert held_out(item, vector) < held_out(item, start)
    pinned, _ = fit_embeddings(base, [items[0].views()], steps=20, lr=0.02, prior=1e4)
    assert (pinned[0] - start).norm() < 0.1 * (fitted[0] - start).norm()


def test_targets_then_regression_training_makes_a_loadable_booster(leap_tiny, tmp_path, monkeypatch):
    """The two commands of the leap-tiny recipe, at toy size; the targets command resumes."""
    import sys

    from models.booster import targets
    from models.booster import train_booster as booster_train
    from models.booster.network import load_booster

    threads = str(torch.get_num_threads())  # the commands set it process-wide; later tests expect the same
    run = [
        sys.executable,
        "--base-model",
        leap_tiny,
        "--concepts",
        "2",
        "--views",
        "4",
        "--steps",
        "2",
        "--chunk",
        "1",
        "--threads",
        threads,
        "--out",
        str(tmp_path / "targets"),
    ]
    monkeypatch.setattr(sys, "argv", run)
    targets.main()
    entries, fitted = targets.load_targets(tmp_path / "targets")
    assert len(entries) == 2 and fitted.shape[0] == 2
    targets.main()  # everything fitted already: nothing changes
    torch.testing.assert_close(targets.load_targets(tmp_path / "targets")[1], fitted)

    monkeypatch.setattr(
        sys,
        "argv",
        [
            sys.executable,
            "--base-model",
            leap_tiny,
            "--targets",
            str(tmp_path / "targets"),
            "--denoise-weight",
            "0",
            "--embedding-weight",
            "1",
            "--steps",
            "3",
            "--sets",
            "2",
            "--input-views",
            "3",
            "--target-views",
            "0",
            "--pool-views",
            "4",
            "--threads",
            threads,
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path / "b"),
        ],
    )
    booster_train.main()
    booster = load_booster(tmp_path / "b")
    assert booster.config.base_model == leap_tiny and booster.config.training["targets"] == str(tmp_path / "targets")

    # Then the LoRA head alone, end to end: the embedding path must not move.
    monkeypatch.setattr(
        sys,
        "argv",
        [
            sys.executable,
            "--base-model",
            leap_tiny,
            "--targets",
            str(tmp_path / "targets"),
            "--init-from",
            str(tmp_path / "b"),
            "--train-only",
            "lora",
            "--steps",
            "2",
            "--sets",
            "2",
            "--input-views",
            "3",
            "--target-views",
            "2",
            "--pool-views",
            "5",
            "--threads",
            threads,
            "--work-dir",
            str(tmp_path / "work-lora"),
            "--out",
            str(tmp_path / "b-lora"),
        ],
    )
    booster_train.main()
    tuned = load_booster(tmp_path / "b-lora")
    before, after = booster.state_dict(), tuned.state_dict()
    lora_keys = {"lora_mean", "lora_basis", "coefficient_head.weight", "coefficient_head.bias"}
    assert all(torch.equal(before[k], after[k]) for k in before if k not in lora_keys)
    assert any(not torch.equal(before[k], after[k]) for k in lora_keys)


def test_training_from_a_booster_of_another_base_model_fails_clearly(
    random_tiny, leap_tiny, tmp_path, monkeypatch, capsys
):
    import sys

    from models.booster import train_booster as booster_train

    make_booster(load_base(random_tiny, pick_device("cpu")), "random-tiny", rank=4, image_size=32).save(tmp_path / "b")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            sys.executable,
            "--base-model",
            leap_tiny,
            "--init-from",
            str(tmp_path / "b"),
            "--threads",
            str(torch.get_num_threads()),
            "--work-dir",
            str(tmp_path / "w"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        booster_train.main()
    assert exit_info.value.code == 2
    assert "was trained for random-tiny" in capsys.readouterr().err


def test_family_targets_with_several_vectors_train_a_head_per_count(leap_tiny, tmp_path, monkeypatch):
    """Targets fitted on procedural families, refitted with 2 vectors on the same concepts, train a 2-vector head."""
    import sys

    from models.booster import targets
    from models.booster import train_booster as booster_train
    from models.booster.network import load_booster
    from models.reference.concepts import benchmark_concepts

    threads = str(torch.get_num_threads())
    common = ["--base-model", leap_tiny, "--views", "4", "--steps", "2", "--chunk", "2", "--threads", threads]
    monkeypatch.setattr(
        sys,
        "argv",
        [sys.executable, *common, "--families", "outlined", "noise", "--concepts", "2", "--out", str(tmp_path / "t1")],
    )
    targets.main()
    entries, one = targets.load_targets(tmp_path / "t1")
    assert [entry["family"] for entry in entries] == ["outlined", "noise"] and one.shape == (2, 64)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            sys.executable,
            *common,
            "--from-index",
            str(tmp_path / "t1"),
            "--concepts",
            "2",
            "--num-vectors",
            "2",
            "--out",
            str(tmp_path / "t2"),
        ],
    )
    targets.main()
    entries_two, two = targets.load_targets(tmp_path / "t2")
    assert entries_two == entries and two.shape == (2, 2, 64)

    monkeypatch.setattr(
        sys,
        "argv",
        [
            sys.executable,
            "--base-model",
            leap_tiny,
            "--targets",
            str(tmp_path / "t1"),
            "--vector-targets",
            str(tmp_path / "t2"),
            "--denoise-weight",
            "0",
            "--embedding-weight",
            "1",
            "--steps",
            "2",
            "--sets",
            "2",
            "--input-views",
            "3",
            "--target-views",
            "0",
            "--pool-views",
            "4",
            "--threads",
            threads,
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path / "b"),
        ],
    )
    booster_train.main()
    booster = load_booster(tmp_path / "b")
    assert booster.config.vector_heads == [2] and booster.supported_vectors() == [1, 2]
    vectors, _, note = predict(booster, benchmark_concepts("dev")[0].views(), 2)
    assert vectors.shape == (2, 64) and not note


def test_concept_families_render_deterministically_and_hold_whole_families_out():
    import numpy as np

    from models.booster.families import (
        FAMILIES,
        HELD_OUT_FAMILIES,
        TRAIN_FAMILIES,
        draw_family_concept,
        render_family,
    )

    assert set(TRAIN_FAMILIES) | set(HELD_OUT_FAMILIES) == set(FAMILIES)
    assert not set(TRAIN_FAMILIES) & set(HELD_OUT_FAMILIES)
    for family in FAMILIES:
        concept = draw_family_concept(family, np.random.default_rng(0))
        first, again, other = render_family(concept, 1), render_family(concept, 1), render_family(concept, 2)
        assert first.size == (32, 32) and first.mode == "RGB"
        assert np.array_equal(np.asarray(first), np.asarray(again))
        assert not np.array_equal(np.asarray(first), np.asarray(other)), family  # views vary


def test_the_benchmark_tunes_the_baseline_for_speed_not_final_loss():
    from models.booster.benchmark import fastest_rates

    grid = [{"embedding_lr": 0.005}, {"embedding_lr": 0.02}]
    # Slow rate ends lowest (0.100); fast rate is within 2% of that at step 5 and ends at 0.101.
    slow = {0: 0.2, 5: 0.15, 10: 0.12, 50: 0.100}
    fast = {0: 0.2, 5: 0.101, 10: 0.101, 50: 0.101}
    rates, results = fastest_rates(grid, [[slow, slow], [fast, fast]], 50)
    assert rates == {"embedding_lr": 0.02}
    assert results[0]["steps_to_best_any_plus_2pct"] == [50, 50] and results[1]["steps_to_best_any_plus_2pct"] == [5, 5]


def test_the_booster_learning_rate_decays_by_a_cosine_from_its_peak_to_five_percent():
    from models.booster.train_booster import get_lr

    assert get_lr(0, steps=100, peak=1e-3) == pytest.approx(1e-3)
    assert get_lr(50, steps=100, peak=1e-3) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert get_lr(100, steps=100, peak=1e-3) == pytest.approx(5e-5)
    rates = [get_lr(step, steps=100, peak=1.0) for step in range(101)]
    assert all(earlier > later for earlier, later in zip(rates, rates[1:], strict=False))
