"""The text trainer: textual inversion for LMs, LoRA, or both in two phases (pivotal).

    registry = load_registry()
    result = train(TextTrainConfig(base_model="smollm2-135m", mode="pivotal"), examples, out_dir,
                   registry=registry, booster_resolver=text_booster_resolver(registry))

`token` learns only the new token's vectors (with tied embeddings its output row is the same
parameter); `lora` trains peft LoRA with the token fixed at its initial value; `pivotal` trains
the token alone first, then LoRA with the token at a lower rate, as on the image side.
The base model is loaded once per process and shared; a job never writes to it.

Every run keeps the best state along its evaluation, never a worse one than it started from: a run
with `steps` trains exactly that many on every example, evaluates them every `stopping.eval_every`
steps (and at its end), and keeps its best evaluated state (the start included), so a rate that
diverges or a start already at its best is not trained away. The manifest's `eval_losses` has the
start, best and final losses and the best step.

Without `steps` a run stops when done by the image trainer's rule (models/trainer/stopping.py):
every `stopping.eval_every` steps it takes the loss of a fixed evaluation set (every 5th example
held back from 10 examples on, at most EVAL_EXAMPLES of them in a fixed order) and stops on a
plateau or at `max_steps`, keeping its best evaluated state. With 4 to 9 examples every 4th is held
back while the run finds its best step; the job then reruns that many steps from the same start on
all of them (`_refit`). Fewer than 4 are evaluated on themselves. Pivotal: the token phase gets at
most pivot_fraction of the cap and its own plateau check; LoRA then joins from the best token so far
and the LoRA phase runs to its own plateau or the cap.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from models.enums import Init, Mode
from models.registry import Registry
from models.text.base_model import TextBase, hub_id_for, load_text_base, pick_device, resolve_text_model
from models.text.booster import StartScorer, TextBoosterResolver
from models.text.concept import TextConcept, lora_target_modules
from models.text.config import TextTrainConfig, with_defaults
from models.text.data import IGNORE, Row, collate, lm_loss, pad_id_of, tokenize_example
from models.text.errors import InvalidExamplesError
from models.text.examples import MAX_EXAMPLES, MIN_EXAMPLES, TextExample
from models.text.export import VLLM_DIR, BaseNames, save_text_concept
from models.trainer.config import LoopResult, Progress, TrainResult
from models.trainer.errors import OutOfMemory
from models.trainer.export import loss_summary, write_manifest
from models.trainer.loop import Callbacks, Start, Steps, run_steps
from models.trainer.stopping import HOLD_BACK_MIN_IMAGES, Plateau, hold_back, split_for_eval

EvalHook = Callable[[int, "TextJob"], None]
T = TypeVar("T")


@dataclass
class TextJob:
    """What a running job exposes to evaluation hooks: `concept.base.model` is the trained model."""

    base: TextBase
    concept: TextConcept
    config: TextTrainConfig


def prepare(config: TextTrainConfig, registry: Registry) -> tuple[TextTrainConfig, TextBase]:
    """Validate, fill defaults (the registry's, else TEXT_RECIPE) and load (or reuse) the base model."""
    config.validate()
    config = with_defaults(config, registry)
    config.validate()
    device = pick_device(config.device)
    base = load_text_base(resolve_text_model(config.base_model, config.data_dir, registry), device)
    return config, base


@contextlib.contextmanager
def attached(base: TextBase, config: TextTrainConfig) -> Iterator[TextConcept]:
    """A job's concept on the shared base, removed on exit whatever happens."""
    concept = TextConcept(base, token=config.token, num_vectors=config.num_vectors)
    try:
        yield concept
    finally:
        concept.close()


def tokenize_examples(concept: TextConcept, examples: Sequence[TextExample], max_length: int) -> list[Row]:
    """Every example as token ids and labels; one over max_length tokens raises naming its file/line."""
    return [tokenize_example(concept.tokenizer, e, expand=concept.expand, max_length=max_length) for e in examples]


def train(
    config: TextTrainConfig,
    examples: Sequence[TextExample],
    out_dir: Path,
    *,
    registry: Registry,
    booster_resolver: TextBoosterResolver | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    eval_hook: EvalHook | None = None,
    eval_steps: Collection[int] = (),
    guarded_start: bool = True,
    on_start: Callable[[Start], None] | None = None,
) -> TrainResult:
    """Train one text concept and write its artifacts to out_dir.

    `registry` names the base models and their defaults; `booster_resolver` gives init=booster its start
    (models.text.booster.text_booster_resolver(registry)); without one the run starts from the token.

    `eval_hook(step, job)` runs after each step in `eval_steps` (0: before the first) with the
    model as trained so far, e.g. for held-out loss curves. `guarded_start=False` keeps a booster's
    start even where the initializer token scores better (benchmark ablations only).
    """
    started = time.perf_counter()
    if not MIN_EXAMPLES <= len(examples) <= MAX_EXAMPLES:
        raise InvalidExamplesError(f"need {MIN_EXAMPLES}-{MAX_EXAMPLES} examples, got {len(examples)}")
    config, base = prepare(config, registry)
    names = BaseNames(hub_id=hub_id_for(config.base_model, registry), registry_id=config.base_model)
    try:
        with attached(base, config) as concept:
            return _run(
                config,
                base,
                concept,
                examples,
                out_dir,
                started,
                names=names,
                booster_resolver=booster_resolver,
                guarded_start=guarded_start,
                callbacks=Callbacks(on_progress, should_stop, eval_hook, frozenset(eval_steps), on_start=on_start),
            )
    except torch.cuda.OutOfMemoryError as error:
        raise OutOfMemory(
            f"out of GPU memory at batch size {config.batch_size}, max_length {config.max_length}; "
            "try a smaller batch size"
        ) from error


GUARD_EXAMPLES = 8
"""The guarded start scores both starts on (at most) this many of the job's own examples."""


@torch.no_grad()
def guard_loss(base: TextBase, rows: Sequence[Row], pad_id: int) -> float:
    """The loss of a fixed batch (the job's first GUARD_EXAMPLES examples) with the token as it is now."""
    return float(lm_loss(base.model, collate(list(rows[:GUARD_EXAMPLES]), pad_id, base.device)))


def start_scorer(base: TextBase, concept: TextConcept, max_length: int) -> StartScorer:
    """A booster's scorer: sets the token's input vectors to a candidate (left there) and returns the
    guard's loss on (at most GUARD_EXAMPLES of) the given examples."""
    pad_id = pad_id_of(concept.tokenizer)

    @torch.no_grad()
    def score(vector: torch.Tensor, examples: Sequence[TextExample]) -> float:
        concept.input_vectors.copy_(vector.to(concept.input_vectors).expand_as(concept.input_vectors))
        return guard_loss(base, tokenize_examples(concept, examples[:GUARD_EXAMPLES], max_length), pad_id)

    return score


@torch.no_grad()
def _set_vectors(concept: TextConcept, values: Sequence[torch.Tensor]) -> None:
    for parameter, value in zip(concept.vector_parameters(), values, strict=True):
        parameter.copy_(value)


def _initialise(
    config: TextTrainConfig,
    base: TextBase,
    concept: TextConcept,
    examples: Sequence[TextExample],
    rows: Sequence[Row],
    booster_resolver: TextBoosterResolver | None,
    generator: torch.Generator,
    guarded: bool = True,
) -> tuple[str, str, dict | None]:
    """Set the token's starting point; returns (booster|token|random, a note, the guard's scores or None).

    The guarded start: a booster's vectors are kept only if they score no worse than the
    initializer token's on a fixed batch of the job's own examples, before step 1.
    """
    if config.init == Init.RANDOM:
        concept.init_random(generator)
        return "random", "", None
    concept.init_from_token(config.initializer_token)
    if config.init != Init.BOOSTER:
        return "token", "", None
    no_booster = "no text booster is registered for this base model; started from the initializer token"
    if booster_resolver is None:
        return "token", no_booster, None
    token_start = [p.detach().clone() for p in concept.vector_parameters()]
    found = booster_resolver(base, examples, config, start_scorer(base, concept, config.max_length))
    _set_vectors(concept, token_start)  # the booster's scorer leaves its last candidate set
    if found is None:
        return "token", no_booster, None
    vectors, note = found
    pad_id = pad_id_of(concept.tokenizer)
    token_loss = guard_loss(base, rows, pad_id)
    with torch.no_grad():
        concept.input_vectors.copy_(vectors.to(concept.input_vectors))
    booster_loss = guard_loss(base, rows, pad_id)
    chosen = "booster" if booster_loss <= token_loss or not guarded else "token"
    guard = {
        "token_loss": round(token_loss, 6),
        "booster_loss": round(booster_loss, 6),
        "chosen": chosen,
        "examples": min(len(rows), GUARD_EXAMPLES),
        "guarded": guarded,
    }
    if chosen == "token":
        _set_vectors(concept, token_start)
        note = (
            f"guarded start: the booster's start scored {booster_loss:.4f} on the job's examples, "
            f"the initializer token {token_loss:.4f}; started from the token"
        )
        return "token", note, guard
    return "booster", note, guard


EVAL_EXAMPLES = 16
"""A run that stops when done evaluates at most this many examples (the first, in upload order)."""
EVAL_BATCH = 8


class HeldOutLoss:
    """Mean next-token loss per labelled token of fixed rows, in fixed batches: the same value for the
    same model, every call (no sampling, no dropout)."""

    def __init__(self, base: TextBase, rows: Sequence[Row], pad_id: int) -> None:
        self.model = base.model
        rows = list(rows[:EVAL_EXAMPLES])
        self.batches = [collate(rows[i : i + EVAL_BATCH], pad_id, base.device) for i in range(0, len(rows), EVAL_BATCH)]
        self.counts = [int((batch["labels"][:, 1:] != IGNORE).sum()) for batch in self.batches]

    @torch.no_grad()
    def __call__(self) -> float:
        total = sum(
            float(lm_loss(self.model, batch)) * count
            for batch, count in zip(self.batches, self.counts, strict=True)
            if count
        )
        return total / max(sum(self.counts), 1)


REFIT = "held_back_then_refit"
REFIT_MIN_EXAMPLES = 4
REFIT_HOLD_BACK_EVERY = 4


def _eval_split(items: Sequence[T], *, auto: bool, can_refit: bool) -> tuple[list[T], list[T], str]:
    """(trained, evaluated, evaluated_on) for a run: a fixed step count trains on every item; a run that
    stops when done holds every 5th back from 10 items on (the image trainer's split). From 4 to 9, an
    LM memorises its own examples long before it stops improving on them, so every 4th is held back
    while the run finds its step count, and then it reruns that many steps on all of them (REFIT).
    Fewer than 4 are trained and evaluated on themselves."""
    if not auto:
        return list(items), list(items), "training_examples"
    if len(items) >= HOLD_BACK_MIN_IMAGES or len(items) < REFIT_MIN_EXAMPLES or not can_refit:
        return split_for_eval(items, fallback="training_examples")
    return *hold_back(items, every=REFIT_HOLD_BACK_EVERY), REFIT


def _refit(
    config: TextTrainConfig,
    base: TextBase,
    concept: TextConcept,
    rows: Sequence[Row],
    start_state: list[torch.Tensor],
    selection: LoopResult,
    best_step: int,
    callbacks: Callbacks[TextJob],
    trains_lora: bool,
) -> LoopResult:
    """Rerun the selection run's schedule up to its best step (0: the start itself) from the same start,
    fresh optimiser and seed, on every example; the result counts both runs' steps."""
    _restore(concept, start_state)
    generator = torch.Generator().manual_seed(config.seed)
    steps = _steps(config, base, concept, rows, generator, trains_lora=trains_lora, evaluate=None)
    on_progress = callbacks.on_progress
    offset = selection.done

    def progress(p: Progress) -> None:
        assert on_progress is not None
        on_progress(replace(p, step=offset + p.step, total=offset + best_step))

    rerun = run_steps(
        steps,
        replace(callbacks, on_progress=progress if on_progress is not None else None),
        replace(config, steps=best_step),
        plateau=None,
        pivot_at=min(selection.pivot_step, best_step),
    )
    if on_progress is not None and rerun.done == 0 and selection.losses:  # the start itself: say it is done
        on_progress(Progress(step=offset, total=offset, loss=selection.losses[-1], eta_s=0.0))
    return LoopResult(
        done=selection.done + rerun.done,
        losses=selection.losses + rerun.losses,
        stop_reason=selection.stop_reason,
        pivot_step=rerun.pivot_step,
        train_seconds=selection.train_seconds + rerun.train_seconds,
    )


def _snapshot(concept: TextConcept) -> list[torch.Tensor]:
    return [p.detach().clone() for p in concept.vector_parameters() + concept.lora_parameters()]


@torch.no_grad()
def _restore(concept: TextConcept, state: list[torch.Tensor]) -> None:
    for parameter, value in zip(concept.vector_parameters() + concept.lora_parameters(), state, strict=True):
        parameter.copy_(value)


@dataclass
class _Start:
    used: str
    """booster | token | random"""
    note: str
    guard: dict | None


def _guard_scores(guard: dict | None) -> dict[str, float] | None:
    """The guard's loss of each candidate start, named as the image trainer names them."""
    if guard is None:
        return None
    return {"token": guard["token_loss"], "booster": guard["booster_loss"]}


def _run(
    config: TextTrainConfig,
    base: TextBase,
    concept: TextConcept,
    examples: Sequence[TextExample],
    out_dir: Path,
    started: float,
    *,
    names: BaseNames,
    booster_resolver: TextBoosterResolver | None,
    guarded_start: bool,
    callbacks: Callbacks[TextJob],
) -> TrainResult:
    assert config.batch_size is not None and config.lora_alpha is not None
    auto = config.steps is None
    all_rows = tokenize_examples(concept, examples, config.max_length)  # every example is checked
    # Held-back examples only where the run stops by evaluation; a fixed step count trains on all.
    # A refit's two runs share the cap (selection at most half of it), so a job never runs past max_steps.
    can_refit = auto and (config.max_steps or 0) >= 2
    rows, eval_rows, eval_source = _eval_split(all_rows, auto=auto, can_refit=can_refit)
    refit = eval_source == REFIT
    trained_examples = _eval_split(list(examples), auto=auto, can_refit=can_refit)[0]  # what the booster reads
    torch.manual_seed(config.seed)  # LoRA's A matrices are drawn from the global generator
    generator = torch.Generator().manual_seed(config.seed)
    trains_lora = config.mode in (Mode.LORA, Mode.PIVOTAL)
    targets = lora_target_modules(config.lora_targets)
    if trains_lora:
        concept.add_lora(rank=config.lora_rank, alpha=config.lora_alpha, targets=config.lora_targets)
    start = _Start(
        *_initialise(config, base, concept, trained_examples, rows, booster_resolver, generator, guarded_start)
    )
    callbacks.started(Start(start.used, start.note, _guard_scores(start.guard)))
    start_state = _snapshot(concept)
    # Both kinds of run keep their best evaluated state (run_steps restores it): a fixed step count
    # evaluates the examples it trains on, a run that stops when done its evaluation split.
    evaluate = HeldOutLoss(base, eval_rows, pad_id_of(concept.tokenizer))
    plateau = Plateau(config.stopping, round(evaluate(), 6), start_state)
    steps = _steps(config, base, concept, rows, generator, trains_lora=trains_lora, evaluate=evaluate)
    if refit:
        assert config.max_steps is not None
        # The selection run only finds the step count: the caller's hooks see the rerun on every example.
        selection_config = replace(config, max_steps=config.max_steps // 2)
        selection = run_steps(steps, replace(callbacks, eval_hook=None), selection_config, plateau=plateau)
        best = plateau.best_step
        loop = _refit(config, base, concept, all_rows, start_state, selection, best, callbacks, trains_lora)
    else:
        loop = run_steps(steps, callbacks, config, plateau=plateau)

    artifacts = save_text_concept(
        out_dir,
        concept,
        base=names,
        rank=config.lora_rank,
        alpha=config.lora_alpha,
        target_modules=targets,
    )
    compute_seconds = time.perf_counter() - started
    stopping = plateau.report(
        evaluated_on=eval_source,
        eval_examples=len(eval_rows[:EVAL_EXAMPLES]),
        training_examples=len(rows),
        **({"refit_steps": plateau.best_step} if refit else {}),
    )
    manifest = _manifest(
        config,
        base,
        concept,
        start,
        loop,
        stopping=stopping,
        trains_lora=trains_lora,
        targets=targets,
        hub_id=names.hub_id,
        num_examples=len(examples),
        num_tokens=sum(len(r.ids) for r in all_rows),
        compute_seconds=compute_seconds,
    )
    artifacts.append(write_manifest(out_dir, manifest, artifacts))
    return TrainResult(
        out_dir=out_dir,
        artifacts=artifacts,
        manifest=manifest,
        steps=loop.done,
        init_used=start.used,
        init_note=start.note,
        device=str(base.device),
        compute_seconds=compute_seconds,
        losses=loop.losses,
        stop_reason=loop.stop_reason,
        eval_curve=plateau.curve if auto else [],  # the API's curve is the stopping rule's; the manifest has both
    )


def _optimizer(
    config: TextTrainConfig, concept: TextConcept, trains_lora: bool
) -> tuple[torch.optim.AdamW, list[torch.nn.Parameter]]:
    """AdamW over the token's vectors (group 0) and, where trained, the LoRA (group 1)."""
    lora_parameters = concept.lora_parameters()
    vectors = concept.vector_parameters()
    groups = [{"params": vectors, "lr": config.embedding_lr or 0.0, "weight_decay": 0.0}]
    if trains_lora:
        groups.append({"params": lora_parameters, "lr": config.lora_lr or 0.0, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)
    for parameter in vectors:
        parameter.requires_grad_(config.mode != Mode.LORA)
    return optimizer, lora_parameters


def _steps(
    config: TextTrainConfig,
    base: TextBase,
    concept: TextConcept,
    rows: Sequence[Row],
    generator: torch.Generator,
    *,
    trains_lora: bool,
    evaluate: HeldOutLoss | None,
) -> Steps[TextJob, list[torch.Tensor]]:
    """The text trainer's side of the shared step loop (models/trainer/loop.py), with a fresh optimiser."""
    assert config.batch_size is not None
    batch_size = config.batch_size
    optimizer, lora_parameters = _optimizer(config, concept, trains_lora)
    pad_id = pad_id_of(concept.tokenizer)

    def step() -> float:
        index = torch.randint(0, len(rows), (batch_size,), generator=generator)
        batch = collate([rows[int(i)] for i in index], pad_id, base.device)
        loss = lm_loss(base.model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def set_phase(in_pivot_phase: bool) -> None:
        for parameter in lora_parameters:
            parameter.requires_grad_(trains_lora and not in_pivot_phase)
        if config.mode == Mode.PIVOTAL:
            lr = config.embedding_lr if in_pivot_phase else config.pivot_embedding_lr
            optimizer.param_groups[0]["lr"] = lr or 0.0

    def evaluated() -> float:
        assert evaluate is not None
        return evaluate()

    return Steps(
        step=step,
        set_phase=set_phase,
        job=lambda: TextJob(base, concept, config),
        evaluate=evaluated,
        snapshot=lambda: _snapshot(concept),
        restore=lambda state: _restore(concept, state),
    )


def vllm_support(config: TextTrainConfig, concept: TextConcept, init_used: str, *, trains_lora: bool) -> dict[str, Any]:
    """The manifest's `vllm`: what the lora-vllm folder carries. vLLM's LoRA loader takes LoRA weights
    only and cannot add a token to the vocabulary, so the token's vector is out of its reach; only a
    `lora` training that started from the initializer word keeps a vector vLLM already has (that word's
    first sub-word), which a prompt can write instead of the token."""
    if not trains_lora:
        return {
            "folder": None,
            "expresses_token": False,
            "note": "token mode trains no LoRA: the concept is the token's vector, which vLLM cannot add; "
            "use adapter/ with peft",
        }
    if config.mode == Mode.LORA and init_used == "token":
        ids = concept.word_ids(config.initializer_token) or concept.word_ids(f" {config.initializer_token}")
        word = concept.tokenizer.decode(ids[:1]) * len(concept.tokens)
        return {
            "folder": VLLM_DIR,
            "expresses_token": True,
            "token_as": word,
            "note": f"the token kept the initializer word's vector: with vLLM, write {word!r} where the "
            "examples wrote the token",
        }
    origin = "trained" if config.mode == Mode.PIVOTAL else "predicted by the booster"
    origin = "random" if config.mode == Mode.LORA and init_used == "random" else origin
    return {
        "folder": VLLM_DIR,
        "expresses_token": False,
        "note": f"the token's vector was {origin}, and vLLM cannot add a token: {VLLM_DIR}/ carries the LoRA "
        "without it; use adapter/ with peft (or transformers) where the token matters",
    }


def eval_losses(stopping: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `eval_losses`: the evaluation's loss at the start, at its best step and at the
    last evaluated step, and which state the job kept (its best, or with `held_back_then_refit` the
    rerun of best_step steps on every example, which has no held-back example left to score)."""
    curve = stopping["curve"]
    refit = stopping["evaluated_on"] == REFIT
    return {
        "evaluated_on": stopping["evaluated_on"],
        "start": curve[0][1],
        "best": stopping["best_loss"],
        "best_step": stopping["best_step"],
        "final": curve[-1][1],
        "final_step": curve[-1][0],
        "kept": "refit" if refit else "best",
        "kept_loss": None if refit else stopping["best_loss"],
    }


def _manifest(
    config: TextTrainConfig,
    base: TextBase,
    concept: TextConcept,
    start: _Start,
    loop: LoopResult,
    *,
    stopping: dict[str, Any],
    trains_lora: bool,
    targets: list[str],
    hub_id: str,
    num_examples: int,
    num_tokens: int,
    compute_seconds: float,
) -> dict[str, Any]:
    """manifest.json's content (plain strings and numbers only)."""
    public = replace(config, data_dir=None)  # no server paths in what the user downloads
    return {
        "kind": "text",
        "base_model": config.base_model,
        "base_model_hub_id": hub_id,
        "token": config.token,
        "tokens": concept.tokens,
        "token_ids": concept.token_ids,
        "tied_embeddings": concept.tied,
        "mode": str(config.mode),
        "init": str(config.init),
        "init_used": start.used,
        "init_note": start.note,
        "init_guard": start.guard,
        "steps": loop.done,
        "max_steps": config.max_steps,
        "stop_reason": loop.stop_reason,
        "stopping": stopping,
        "eval_losses": eval_losses(stopping),
        "pivot_step": loop.pivot_step,
        "seed": config.seed,
        "learning_rates": {
            "embedding": config.embedding_lr,
            "pivot_embedding": config.pivot_embedding_lr,
            "lora": config.lora_lr,
        },
        "lora_rank": config.lora_rank if trains_lora else None,
        "lora_alpha": config.lora_alpha if trains_lora else None,
        "lora_targets": targets if trains_lora else None,
        "vllm": vllm_support(config, concept, start.used, trains_lora=trains_lora),
        "num_examples": num_examples,
        "num_tokens": num_tokens,
        "device": str(base.device),
        "config": public.to_dict(),
        "timings": {
            "total_seconds": round(compute_seconds, 3),
            "train_seconds": round(loop.train_seconds, 3),
            "steps_per_second": round(loop.done / max(loop.train_seconds, 1e-9), 3),
        },
        "loss": loss_summary(loop.losses),
    }
