"""The step loop both trainers (image and text) run around their own optimisation step.

It owns what the two share: pivotal phases (phase 1 trains the token alone, at most
`pivot_fraction` of the steps), cancellation, progress reports, evaluation hooks and the stopping
rule (models/trainer/stopping.py) that keeps the best evaluated state: a run without `steps` stops
by it; a run with `steps` (given a rule, as the text trainer gives one) runs them all and keeps its
best evaluated state too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from models.enums import Mode, StopReason
from models.trainer.config import LoopResult, Progress
from models.trainer.errors import TrainingCanceled
from models.trainer.stopping import Plateau

J = TypeVar("J")
S = TypeVar("S")


@dataclass(frozen=True)
class Start:
    """How a run starts, told to `on_start` once it is decided (the guard included), before step 1."""

    used: str
    """booster | token | random | state"""
    note: str = ""
    """Why it differs from the requested init, or which start the guard chose and why."""
    scores: dict[str, float] | None = None
    """The guard's loss of each candidate start (init=booster)."""


@dataclass
class Callbacks(Generic[J]):
    """The caller's hooks into a run; `J` is what the trainer shows them of a running job."""

    on_progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    eval_hook: Callable[[int, J], None] | None = None
    eval_steps: frozenset[int] = frozenset()
    on_finish: Callable[[J], None] | None = None
    on_start: Callable[[Start], None] | None = None

    def started(self, start: Start) -> None:
        """Tell on_start how the run starts."""
        if self.on_start is not None:
            self.on_start(start)


@dataclass
class Steps(Generic[J, S]):
    """A trainer's side of the loop; `S` is a saved state of the trained parameters."""

    step: Callable[[], float]
    """One optimisation step; its loss."""
    set_phase: Callable[[bool], None]
    """Set trainable parameters and rates for pivotal phase 1 (True) or the rest of the run (False)."""
    job: Callable[[], J]
    evaluate: Callable[[], float]
    """The loss of the run's fixed evaluation (only with a stopping rule)."""
    snapshot: Callable[[], S]
    restore: Callable[[S], None]


class LoopConfig(Protocol):
    """What the loop reads of either trainer's config."""

    @property
    def steps(self) -> int | None: ...
    @property
    def max_steps(self) -> int | None: ...
    @property
    def mode(self) -> str: ...
    @property
    def pivot_fraction(self) -> float: ...
    @property
    def progress_every(self) -> int: ...


def run_steps(
    steps: Steps[J, S],
    callbacks: Callbacks[J],
    config: LoopConfig,
    *,
    plateau: Plateau[S] | None,
    pivot_at: int | None = None,
) -> LoopResult:
    """Step until `steps` (exactly), or with a plateau rule and no `steps` until it says done or
    `max_steps`; with a rule either ends on its best evaluated state. `pivot_at` replaces pivotal's
    `pivot_fraction` of the steps (a rerun of a schedule another run found)."""
    fixed = config.steps is not None
    total = config.steps if fixed else config.max_steps
    assert total is not None and (fixed or plateau is not None)
    pivotal, pivot_fraction, progress_every = config.mode == Mode.PIVOTAL, config.pivot_fraction, config.progress_every
    # With a rule, int(total * pivot_fraction) is the cap on phase 1.
    pivot_step = (pivot_at if pivot_at is not None else int(total * pivot_fraction)) if pivotal else 0
    losses: list[float] = []
    stop_reason = StopReason.STEPS.value if fixed else StopReason.MAX_STEPS.value
    in_pivot_phase = pivotal
    if callbacks.eval_hook is not None and 0 in callbacks.eval_steps:
        callbacks.eval_hook(0, steps.job())  # the starting point's quality, before any step
    step_started = time.perf_counter()
    done = 0
    reported = 0
    while done < total:
        if callbacks.should_stop is not None and callbacks.should_stop():
            raise TrainingCanceled(f"canceled at step {done} of {total}")
        if in_pivot_phase and done >= pivot_step:
            in_pivot_phase = False
        steps.set_phase(in_pivot_phase)
        loss = steps.step()
        losses.append(loss)
        done += 1
        if callbacks.on_progress is not None and (done % progress_every == 0 or done == total):
            elapsed = time.perf_counter() - step_started
            callbacks.on_progress(Progress(step=done, total=total, loss=loss, eta_s=elapsed / done * (total - done)))
            reported = done
        if callbacks.eval_hook is not None and done in callbacks.eval_steps:
            callbacks.eval_hook(done, steps.job())
        if plateau is None:
            continue
        outcome = _observe(
            steps,
            plateau,
            done,
            last=done == total,
            in_pivot_phase=in_pivot_phase,
            phase_ends=in_pivot_phase and done >= pivot_step,
            stops=not fixed,
        )
        if outcome == "pivot":
            in_pivot_phase, pivot_step = False, done
        elif outcome == "converged":
            stop_reason = StopReason.CONVERGED.value
            break
    if plateau is not None:
        steps.restore(plateau.best_state)  # the best evaluated state, not the last one
    if callbacks.on_progress is not None and reported != done and losses:
        callbacks.on_progress(Progress(step=done, total=total, loss=losses[-1], eta_s=0.0))
    return LoopResult(
        done=done,
        losses=losses,
        stop_reason=stop_reason,
        pivot_step=pivot_step,
        train_seconds=time.perf_counter() - step_started,
    )


def _observe(
    steps: Steps[J, S],
    plateau: Plateau[S],
    done: int,
    *,
    last: bool,
    in_pivot_phase: bool,
    phase_ends: bool,
    stops: bool = True,
) -> Literal["continue", "pivot", "converged"]:
    """Evaluate where the stopping rule is due: a converged (or capped) pivotal phase 1 hands over to
    phase 2 from its best state ("pivot"); any other converged run stops ("converged"). With
    `stops=False` (a fixed step count) only the schedule ends a phase and nothing stops the run."""
    if not plateau.due(done, last=last or phase_ends):
        return "continue"
    converged = plateau.record(done, round(steps.evaluate(), 6), steps.snapshot) and stops
    if in_pivot_phase and (converged or phase_ends):
        # Phase 1 is done: LoRA joins from the best vectors so far.
        steps.restore(plateau.best_state)
        plateau.new_phase(done)
        return "pivot"
    return "converged" if converged else "continue"
