"""The booster benchmark's summaries: pure functions over recorded runs, no training."""

import pytest
import torch

from models.booster.benchmark import (
    Curve,
    at_grid_edge,
    counted_steps,
    derangement,
    gain_kept,
    lora_similarity,
    never_worse,
    summarise,
    variant_record,
)

BUDGET = 40


def curve_reaching(step: int | None, *, start: float = 1.0, final: float = 0.5) -> Curve:
    """A held-out curve at 0, 1, 2, ..., BUDGET that first reaches 0.5 at `step` (None: never)."""
    losses = {}
    for at in range(BUDGET + 1):
        reached = step is not None and at >= step
        losses[at] = final if reached else (start if at == 0 else max(start - 0.01 * at, 0.6))
    if step is None:
        losses[BUDGET] = 0.6
    return Curve(losses=losses)


def run(concept: str, seed: int, token_step: int, variants: dict[str, Curve]) -> dict:
    token = curve_reaching(token_step)
    target = min(token.losses.values()) * 1.02
    token_steps = counted_steps(token.steps_to(target), BUDGET)
    return {
        "concept": concept,
        "seed": seed,
        "target_loss": target,
        "token": {
            "steps": token.steps_to(target),
            "counted_steps": token_steps,
            "zero_step": token.losses[0],
            "final": token.losses[BUDGET],
        },
        "variants": {name: variant_record(curve, target, token_steps, BUDGET) for name, curve in variants.items()},
    }


def test_a_run_that_misses_the_target_counts_as_the_steps_budget_in_the_speedup():
    runs = [run("fast", seed, 20, {"booster": curve_reaching(2)}) for seed in range(3)]
    runs += [run("missed", seed, 20, {"booster": curve_reaching(None)}) for seed in range(3)]
    summary = summarise(runs, "booster")
    assert summary["speedup_by_concept"] == {"fast": 10.0, "missed": 0.5}  # 20 token steps / the 40-step budget
    assert summary["speedup"]["median"] == pytest.approx(5.25)  # not 10x from the reached concept alone
    assert summary["missed_target_runs"] == 3 and summary["concepts_with_missed_runs"] == ["missed"]
    assert summary["speedup_bound"].startswith("upper bound")
    assert summary["booster_steps"]["max"] == BUDGET


def test_a_summary_without_misses_is_exact():
    summary = summarise([run("fast", 0, 20, {"booster": curve_reaching(0)})], "booster")
    assert summary["speedup"]["median"] == 20.0  # step 0 counts as 1 step
    assert summary["missed_target_runs"] == 0 and summary["speedup_bound"] == "exact"


def test_never_worse_is_judged_per_run_and_names_the_worst():
    runs = [run("a", seed, 20, {"booster": curve_reaching(20)}) for seed in range(3)]
    runs[1]["variants"]["booster"]["final"] = runs[1]["token"]["final"] * 1.02  # one seed of three ends 2% worse
    runs[2]["variants"]["booster"]["zero_step"] = runs[2]["token"]["zero_step"] * 1.005  # within the 1% margin
    check = never_worse(runs, "booster")
    assert check["runs"] == 3 and check["runs_worse"] == 1
    assert check["worst"] == {"concept": "a", "seed": 1, "which": "final", "ratio": pytest.approx(1.02)}
    assert summarise(runs, "booster")["worst_final_ratio"] == pytest.approx(1.0)  # the per-concept median hides it


def test_the_shuffled_ablation_keeps_its_share_of_the_real_gain():
    def runs_with(shuffled_step: int | None) -> list[dict]:
        return [
            run(name, 0, 20, {"booster": curve_reaching(2), "shuffled": curve_reaching(shuffled_step)})
            for name in ("a", "b")
        ]

    assert gain_kept(runs_with(20), "booster")["speedup_gain_kept"] == 0.0  # 1x: nothing kept
    assert gain_kept(runs_with(5), "booster")["speedup_gain_kept"] == pytest.approx(3 / 9)  # 4x of 10x
    missed = gain_kept(runs_with(None), "booster")
    assert missed["speedup_gain_kept"] is not None and missed["speedup_gain_kept"] < 0
    assert missed["steps_saved_kept"] is not None and missed["steps_saved_kept"] < 0  # a miss is worse than the token
    no_gain = [run("a", 0, 20, {"booster": curve_reaching(20), "shuffled": curve_reaching(2)})]
    assert gain_kept(no_gain, "booster")["speedup_gain_kept"] is None  # no real gain to keep


@pytest.mark.parametrize("count", range(2, 9))
def test_the_ablation_derangement_never_feeds_a_concept_its_own_images(count):
    for seed in range(40):
        order = derangement(count, seed)
        assert sorted(order) == list(range(count))
        assert all(index != other for index, other in enumerate(order))
        assert order == derangement(count, seed)  # seeded
    assert len({tuple(derangement(count, seed)) for seed in range(40)}) > 1 or count == 2
    with pytest.raises(ValueError):
        derangement(1, 0)


def lora(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"block.{name}.lora_A.weight": torch.randn(4, 8, generator=generator) for name in ("to_q", "to_v")} | {
        f"block.{name}.lora_B.weight": torch.randn(8, 4, generator=generator) for name in ("to_q", "to_v")
    }


def test_identical_loras_are_similar_one_and_the_update_ignores_the_factors_basis():
    first = lora(0)
    assert lora_similarity({"a": first, "b": first}) == {"factors": pytest.approx(1.0), "updates": pytest.approx(1.0)}
    mixing = torch.randn(4, 4, generator=torch.Generator().manual_seed(5)) + 4 * torch.eye(4)
    same_update = {
        key: (mixing @ value if "lora_A" in key else value @ torch.linalg.inv(mixing)) for key, value in first.items()
    }
    similar = lora_similarity({"a": first, "b": same_update})
    assert similar["updates"] == pytest.approx(1.0, abs=1e-5)
    assert similar["factors"] is not None and similar["factors"] < 0.99
    negated = {key: -value if "lora_B" in key else value for key, value in first.items()}
    assert lora_similarity({"a": first, "b": negated})["updates"] == pytest.approx(-1.0)
    unrelated = lora_similarity({"a": first, "b": lora(1)})["updates"]
    assert unrelated is not None and abs(unrelated) < 0.5


def test_the_sweep_flags_a_chosen_rate_at_the_edge_of_its_grid():
    grid = [{"embedding_lr": 0.01, "lora_lr": 0.001}, {"embedding_lr": 0.02, "lora_lr": 0.003}]
    grid.append({"embedding_lr": 0.05, "lora_lr": 0.003})
    assert at_grid_edge(grid[1], grid) == ["lora_lr"]  # the largest LoRA rate tried: a faster one may lie beyond
    assert at_grid_edge(grid[0], grid) == ["embedding_lr", "lora_lr"]
    assert at_grid_edge({"lora_lr": 0.003}, [{"lora_lr": 0.003}]) == []  # one point has no edge to speak of
