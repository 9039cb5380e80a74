"""Train a booster for one base model.

    python -m models.booster.targets --families outlined twocolour checker stripes gradient noise blobs rings \
        --out runs/targets-n1                                          # 1. fitted targets (+ --num-vectors 2, 4)
    python -m models.booster.train_booster --base-model leap-tiny --targets runs/targets-n1 \
        --vector-targets runs/targets-n2 runs/targets-n4 --teacher models/booster/weights/leap-tiny-world \
        --denoise-weight 0 --embedding-weight 1 --sets 32 --input-views 8 --target-views 0 --steps 1000 \
        --no-lora "why"                                  # 2. regression (docs/base-models.md: the exact recipe)
    python -m models.booster.targets --lora models/booster/weights/leap-tiny --families train --concepts 288 \
        --chunk 96 --rows 2 --steps 150 --lr 0.003 --prior 0.001 --out runs/lora-targets   # 3. LoRA B targets
    python -m models.booster.train_booster --base-model leap-tiny --init-from models/booster/weights/leap-tiny \
        --train-only lora --lora-targets runs/lora-targets --targets runs/lora-targets --sets 8 --input-views 8 \
        --target-views 4 --steps 600 --work-dir runs/booster-lora   # 4. LoRA head: PCA + ridge, then end to end

Two losses, mixed by weights, over sets of images (never a benchmark concept):
- regression of the predicted token vector onto a target: a concept's fitted textual-inversion
  embedding (models.booster.targets) or, LEAP-style, a vocabulary word's own embedding for the
  images the base model draws of that word (models.booster.dataset, --data);
- end to end (HyperDreamBooth-style): the base model's denoising loss on other views of the same
  concept with the predicted embedding + LoRA attached (--denoise-weight; 0 skips the base model).

Why regression onto fitted targets for leap-tiny: measured on the validation concepts, 2000 steps
end to end left the booster's zero-step held-out loss worse than plain token init (0.109 vs 0.102),
while regression onto 2560 fitted targets put it within 2% of a full fine-tune's best on 7 of 8
concepts (the benchmark: 40x textual inversion, 60x pivotal). One denoising sample says little
about the embedding (the gap between a good and a bad embedding is ~10% of a loss whose per-sample
spread is far larger); a fitted target carries the whole averaged fine-tune. The targets' L2 prior
matters: unregularised fits were 10x the norm of a vocabulary vector and scattered between
near-identical concepts, and regression onto them failed.
For SD 1.5 use word sets (--data, --world-share 0) or targets fitted on them (targets --data).

The LoRA head is set after the embedding path, which it leaves as it is (--init-from, --train-only
lora). LoRA factors have no unique optimum (B A = (B R^-1)(R A)), so the booster fixes the
down-projections A per base model (models.booster.network) and predicts only B: LoRA targets are B's
fitted on that A (targets --lora), their principal components become the basis and a ridge regression
from the set features the coefficients (--lora-targets); then --steps of the end-to-end denoising loss
on views the booster did not see train the coefficient head and the mean B (the basis stays). Whether
the prediction is shipped (use_lora) is decided by models.booster.lora_check on development concepts.
Resumable from --work-dir.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from models.booster.apply import (
    BatchedConcepts,
    PlaceholderTokenizers,
    base_fingerprint,
    lora_layout,
    per_row_denoising_loss,
    word_embedding,
)
from models.booster.dataset import load_sets
from models.booster.network import Booster, BoosterConfig, load_booster
from models.booster.targets import draw_concept, load_lora_targets, load_targets, render_entry
from models.reference.concepts import benchmark_concepts
from models.reference.world import render
from models.registry import load_registry
from models.trainer.base_model import BaseComponents, load_base, pick_device
from models.trainer.data import OBJECT_TEMPLATES, images_to_tensor
from models.trainer.defaults import resolve_base_model

TOKEN = "<booster>"


def make_booster(
    base: BaseComponents, base_model: str, *, rank: int, image_size: int, vector_heads: list[int] | None = None
) -> Booster:
    config = BoosterConfig(
        base_model=base_model,
        base_fingerprint=base_fingerprint(base),
        embedding_width=base.embedding_width,
        lora_rank=rank,
        lora_layout=lora_layout(base, rank),
        image_size=image_size,
        vector_heads=list(vector_heads or []),
    )
    return Booster(config, initial_embedding=word_embedding(base))


Targets = dict[int, torch.Tensor]
"""Regression targets of one set: token-vector count -> fitted vectors [count, width]."""


class SetSampler:
    """Draws one training set: `views` images of a concept and its embedding targets (or None).

    World sets are fresh renders of a random concept (new seeds every draw); with fitted targets
    they are random views from a pool of renders of a fitted concept (a world or family concept),
    and regress onto its fitted embedding (and, where --vector-targets fitted the same concepts with
    2 or 4 vectors, onto those too). Word sets pair a word's images with the word's embedding, or with
    the embedding fitted on those images where the targets were fitted on the word sets (targets --data).
    With a teacher share, world sets are drawn fresh and flagged for distillation (target: the
    teacher booster's prediction on the same views)."""

    def __init__(
        self,
        base: BaseComponents,
        targets: Path | None,
        data: Path | None,
        *,
        views: int,
        world_share: float,
        pool_views: int = 16,
        vector_targets: list[Path] | None = None,
        teacher_share: float = 0.0,
    ) -> None:
        self.base, self.views, self.world_share, self.teacher_share = base, views, world_share, teacher_share
        self.excluded = [item.concept for item in benchmark_concepts()]
        # Fitted concepts get a fixed pool of renders, drawn once: rendering dominates a regression-only step.
        self.fitted: list[tuple[list[Image.Image], Targets]] = []
        self.fitted_words: dict[str, torch.Tensor] = {}
        if targets is not None:
            entries, embeddings = load_targets(targets)
            extra: list[tuple[list[dict], torch.Tensor]] = [load_targets(path) for path in vector_targets or []]
            rng = np.random.default_rng(len(entries))
            for i, entry in enumerate(tqdm(entries, desc="rendering fitted concepts")):
                if "word" in entry:
                    self.fitted_words[entry["word"]] = embeddings[i]
                    continue
                seeds = rng.integers(2**31, size=pool_views)
                pool = [render_entry(entry, int(seed), base.resolution) for seed in seeds]
                wanted: Targets = {1: embeddings[i][None]}
                for other_entries, other in extra:
                    if i < len(other_entries) and other_entries[i] == entry:
                        wanted[other.shape[1]] = other[i]
                self.fitted.append((pool, wanted))
        self.word_sets = load_sets(data) if data else []
        if self.word_sets and min(len(images) for _, images in self.word_sets) < views:
            raise SystemExit(f"every word set needs at least {views} images (--input-views + --target-views)")
        self.word_embeddings = {word: word_embedding(base, word) for word, _ in self.word_sets}

    def draw(self, rng: np.random.Generator) -> tuple[list[Image.Image], Targets | None, bool]:
        """(views, targets or None, whether the teacher supplies the target)."""
        if self.word_sets and rng.random() >= self.world_share:
            word, images = self.word_sets[int(rng.integers(len(self.word_sets)))]
            order = rng.permutation(len(images))[: self.views]
            wanted = self.fitted_words.get(word, self.word_embeddings[word])
            return [images[int(i)] for i in order], {1: wanted[None]}, False
        if self.fitted and rng.random() >= self.teacher_share:
            pool, targets = self.fitted[int(rng.integers(len(self.fitted)))]
            return [pool[int(i)] for i in rng.permutation(len(pool))[: self.views]], targets, False
        concept = draw_concept(rng, self.excluded)
        images = [render(concept, int(rng.integers(2**31)), self.base.resolution) for _ in range(self.views)]
        return images, None, self.teacher_share > 0


def get_lr(step: int, *, steps: int, peak: float) -> float:
    """The learning rate at `step` of `steps`: cosine decay from `peak` to 5% of it."""
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="leap-tiny")
    parser.add_argument("--out", type=Path, default=Path("models/booster/weights/leap-tiny"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/booster-leap-tiny"))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--sets", type=int, default=8)
    parser.add_argument("--input-views", type=int, default=4)
    parser.add_argument("--target-views", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak rate (cosine decay to 5%% of it)")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument(
        "--targets",
        type=Path,
        help="fitted targets (models.booster.targets): their sets regress onto the fitted embeddings",
    )
    parser.add_argument("--pool-views", type=int, default=16, help="renders kept per fitted concept")
    parser.add_argument(
        "--min-input-views",
        type=int,
        default=3,
        help="each step feeds a random number of views in [this, --input-views]: jobs vary",
    )
    parser.add_argument("--data", type=Path, help="a dataset from models.booster.dataset (word sets)")
    parser.add_argument(
        "--world-share",
        type=float,
        default=1.0,
        help="share of sets drawn from the world renderer when --data is given (else 1)",
    )
    parser.add_argument(
        "--embedding-weight",
        type=float,
        default=0.5,
        help="weight of the embedding regression loss (word embedding or fitted target)",
    )
    parser.add_argument(
        "--vector-targets",
        type=Path,
        nargs="*",
        default=[],
        help="targets fitted with 2, 4, ... vectors on the first concepts of --targets "
        "(targets --from-index --num-vectors n): trains a head per count",
    )
    parser.add_argument(
        "--teacher",
        type=Path,
        help="a trained booster whose predictions on fresh world concepts are extra regression targets",
    )
    parser.add_argument("--teacher-share", type=float, default=0.25, help="share of sets the teacher labels")
    parser.add_argument(
        "--no-lora",
        metavar="WHY",
        help="mark the booster embedding-only (use_lora false), with this reason for the manifest",
    )
    parser.add_argument("--init-from", type=Path, help="start from this trained booster (same base model)")
    parser.add_argument(
        "--lora-targets",
        type=Path,
        help="fitted LoRA up-projections (targets --lora, on the --init-from booster): their principal "
        "components become the LoRA basis and a ridge regression the coefficient head, before any steps "
        "(with --train-only lora; --steps 0 stops there)",
    )
    parser.add_argument(
        "--train-only",
        choices=("all", "lora"),
        default="all",
        help="lora: train only the LoRA head end to end, the embedding path stays as it is",
    )
    parser.add_argument(
        "--denoise-weight",
        type=float,
        default=1.0,
        help="weight of the end-to-end denoising loss; 0 skips the base model (regression only)",
    )
    return parser


@dataclass
class _Run:
    """What every training step uses."""

    args: argparse.Namespace
    base: BaseComponents
    booster: Booster
    teacher: Booster | None
    device: torch.device
    tokenizer: PlaceholderTokenizers
    batched: BatchedConcepts
    sampler: SetSampler


def _build(
    args: argparse.Namespace, base: BaseComponents, device: torch.device, parser: argparse.ArgumentParser
) -> tuple[Booster, Booster | None]:
    """The booster to train (fresh, or from --init-from) and the --teacher, if any."""
    vector_heads = {int(load_targets(path)[1].shape[1]) for path in args.vector_targets}
    start_from = load_booster(args.init_from) if args.init_from is not None else None
    if start_from is not None:  # its heads stay (a --train-only lora run trains none of them)
        vector_heads |= set(start_from.config.vector_heads)
    booster = make_booster(
        base, args.base_model, rank=args.rank, image_size=args.image_size, vector_heads=sorted(vector_heads)
    ).to(device)
    teacher = load_booster(args.teacher).to(device) if args.teacher else None
    if start_from is not None:
        if (start_from.config.base_fingerprint, start_from.config.lora_layout, start_from.config.image_size) != (
            booster.config.base_fingerprint,
            booster.config.lora_layout,
            booster.config.image_size,
        ):
            parser.error(
                f"--init-from {args.init_from} was trained for {start_from.config.base_model} "
                f"(or another rank or image size), not for {args.base_model} as configured here"
            )
        if not torch.equal(start_from.lora_down, booster.lora_down):
            parser.error(f"--init-from {args.init_from} has other fixed LoRA down-projections than this base model's")
        booster.load_state_dict(start_from.state_dict(), strict=False)
        booster.config.training = {"init_from_training": start_from.config.training}
    return booster, teacher


def _trained_parameters(args: argparse.Namespace, booster: Booster) -> list[torch.nn.Parameter]:
    """Everything, or (--train-only lora) the LoRA head alone (with --lora-targets, its basis stays the
    targets' principal components: the head learns coefficients and the mean)."""
    if args.train_only == "all":
        return list(booster.parameters())
    basis = [] if args.lora_targets else [booster.lora_basis]
    return [booster.lora_mean, *basis, *booster.coefficient_head.parameters()]


def set_features(booster: Booster, image_sets: Sequence[Sequence[Image.Image]]) -> torch.Tensor:
    """The booster's pooled features ([sets, hidden_width]) of each image set, as a job's uploads give them."""
    size = booster.config.image_size
    with torch.no_grad():
        return torch.cat([booster.hidden(images_to_tensor(images, size)[None]) for images in image_sets])


def fit_lora_head(
    booster: Booster,
    features: torch.Tensor,
    lora_up: torch.Tensor,
    *,
    ridges: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0),
    folds: int = 4,
) -> dict[str, float]:
    """Set the LoRA head from fitted up-projections ([sets, lora_numel], targets --lora) and the sets'
    `features`: the mean and principal components of the targets become lora_mean and lora_basis
    (scaled so each coefficient has unit variance), and the coefficient head is the ridge regression
    of the targets' coefficients on the features (the ridge chosen by cross-validation over sets).

    Returns how well it fits: the share of the targets' variance the basis spans, and, on sets held out
    of each fold, the share the predicted coefficients explain (coefficients and full up-projections)."""
    count, size = lora_up.shape[0], booster.config.basis_size
    mean = lora_up.mean(0)
    _, singular, directions = torch.linalg.svd(lora_up - mean, full_matrices=False)
    scale = singular[:size] / math.sqrt(count)
    basis = scale[:, None] * directions[:size]
    coefficients = (lora_up - mean) @ directions[:size].T / scale

    def solve(rows: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = features[rows], coefficients[rows]
        x_mean, y_mean = x.mean(0), y.mean(0)
        gram = (x - x_mean).T @ (x - x_mean) + ridge * torch.eye(x.shape[1])
        weight = torch.linalg.solve(gram, (x - x_mean).T @ (y - y_mean))
        return weight, y_mean - x_mean @ weight

    order = torch.randperm(count, generator=torch.Generator().manual_seed(0))
    scores: dict[float, tuple[float, float]] = {}
    for ridge in ridges:
        residual = torch.zeros(()), torch.zeros(())
        for fold in range(folds):
            held = order[fold::folds]
            kept = order[torch.isin(order, held, invert=True)]
            weight, bias = solve(kept, ridge)
            predicted = features[held] @ weight + bias
            residual = (
                residual[0] + (predicted - coefficients[held]).pow(2).sum(),
                residual[1] + (mean + predicted @ basis - lora_up[held]).pow(2).sum(),
            )
        scores[ridge] = (
            1 - float(residual[0] / coefficients.pow(2).sum()),
            1 - float(residual[1] / (lora_up - mean).pow(2).sum()),
        )
    best = max(scores, key=lambda ridge: scores[ridge][0])
    weight, bias = solve(torch.arange(count), best)
    with torch.no_grad():
        booster.lora_mean.copy_(mean)
        booster.lora_basis.copy_(basis)
        booster.coefficient_head.weight.copy_(weight.T)
        booster.coefficient_head.bias.copy_(bias)
    spanned = float(singular[:size].pow(2).sum() / singular.pow(2).sum())
    return {
        "sets": count,
        "basis_variance_share": round(spanned, 4),
        "ridge": best,
        "held_out_coefficient_r2": round(scores[best][0], 4),
        "held_out_lora_r2": round(scores[best][1], 4),
    }


def _resume(checkpoint: Path, booster: Booster, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    """(the step to go on from, the wall seconds spent before) from a checkpoint; (0, 0.0) without one."""
    if not checkpoint.exists():
        return 0, 0.0
    state = torch.load(checkpoint, weights_only=False)
    booster.load_state_dict(state["booster"])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"], state.get("wall_seconds", 0.0)


def _checkpoint(
    checkpoint: Path, booster: Booster, optimizer: torch.optim.Optimizer, step: int, wall_seconds: float
) -> None:
    tmp = checkpoint.with_suffix(".tmp")
    torch.save(
        {
            "booster": booster.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "wall_seconds": wall_seconds,
        },
        tmp,
    )
    tmp.replace(checkpoint)


def _step_loss(run: _Run, rng: np.random.Generator, generator: torch.Generator) -> torch.Tensor:
    """One step's loss: draw the sets, predict from a random number of their views, then the weighted
    end-to-end denoising loss on the other views and the regression onto the sets' targets."""
    args, booster = run.args, run.booster
    drawn = [run.sampler.draw(rng) for _ in range(args.sets)]
    shown = int(rng.integers(min(args.min_input_views, args.input_views), args.input_views + 1))
    inputs = torch.stack([images_to_tensor(images[:shown], args.image_size) for images, _, _ in drawn])
    hidden = booster.hidden(inputs.to(run.device))
    embedding = booster.vectors(hidden, booster.config.num_vectors)
    if args.train_only == "lora":
        hidden, embedding = hidden.detach(), embedding.detach()
    lora_flat = booster.lora_up(hidden)
    loss = torch.zeros((), device=run.device)
    if args.denoise_weight > 0:
        loss = loss + args.denoise_weight * _denoising_loss(run, drawn, embedding, lora_flat, rng, generator)
    targets = _targets(run, drawn, inputs)
    if args.train_only == "all":
        loss = _add_regression_loss(run, loss, hidden, targets)
    return loss


def _denoising_loss(
    run: _Run,
    drawn: list[tuple[list[Image.Image], Targets | None, bool]],
    embedding: torch.Tensor,
    lora_flat: torch.Tensor,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> torch.Tensor:
    """The base model's denoising loss on each set's target views with the predicted concept applied."""
    args, base, device, tokenizer = run.args, run.base, run.device, run.tokenizer
    views = args.input_views + args.target_views
    target_pixels = images_to_tensor(
        [img for images, _, _ in drawn for img in images[args.input_views : views]], base.resolution
    )
    with torch.no_grad():
        latents = base.vae.encode(target_pixels.to(device)).latent_dist.sample()
        latents = latents * base.vae.config.scaling_factor
    run.batched.set(embedding, run.booster.unflatten_lora(lora_flat), rows_per_set=args.target_views)
    prompts = [
        OBJECT_TEMPLATES[int(i)].format(TOKEN) for i in rng.integers(0, len(OBJECT_TEMPLATES), size=latents.shape[0])
    ]
    ids = tokenizer(prompts, device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(
        0, base.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
    ).to(device)
    return per_row_denoising_loss(base, latents, ids, noise, timesteps).mean()


def _targets(
    run: _Run, drawn: list[tuple[list[Image.Image], Targets | None, bool]], inputs: torch.Tensor
) -> list[Targets | None]:
    """Each set's regression targets: its own, or the teacher's prediction for sets the teacher labels."""
    targets: list[Targets | None] = [wanted for _, wanted, _ in drawn]
    taught = [i for i, (_, _, by_teacher) in enumerate(drawn) if by_teacher]
    if taught and run.teacher is not None:
        with torch.no_grad():
            labels, _ = run.teacher(inputs[taught].to(run.device))
        for row, i in enumerate(taught):
            targets[i] = {1: labels[row, :1]}
    return targets


def _add_regression_loss(
    run: _Run, loss: torch.Tensor, hidden: torch.Tensor, targets: list[Targets | None]
) -> torch.Tensor:
    """`loss` plus the weighted regression of each vector count's prediction onto the sets that have targets."""
    for count in run.booster.supported_vectors():
        rows = [i for i, wanted in enumerate(targets) if wanted is not None and count in wanted]
        if not rows:
            continue
        wanted = torch.stack([targets[i][count] for i in rows]).to(run.device)  # type: ignore[index]
        predicted = run.booster.vectors(hidden[rows], count)
        # Normalised so the weight means the same for any base model's embedding scale.
        regression = F.mse_loss(predicted, wanted) / wanted.pow(2).mean()
        loss = loss + run.args.embedding_weight * regression
    return loss


def _fit_lora_head_from(directory: Path, booster: Booster, base: BaseComponents) -> dict[str, float]:
    """fit_lora_head on a LoRA target set, from the views its targets were fitted on."""
    entries, lora_up = load_lora_targets(directory)
    views = [[render_entry(entry, seed, base.resolution) for seed in entry["seeds"]] for entry in entries]
    return fit_lora_head(booster.cpu(), set_features(booster.cpu(), views), lora_up)


def _save(args: argparse.Namespace, booster: Booster, wall_seconds: float) -> None:
    if args.no_lora:
        booster.config.use_lora, booster.config.use_lora_note = False, args.no_lora
    booster.config.training = {
        **booster.config.training,
        **{k: str(v) for k, v in vars(args).items()},
        "wall_seconds": round(wall_seconds, 1),
    }
    booster.cpu().save(args.out)
    print(
        f"saved {args.out} ({sum(p.numel() for p in booster.parameters()) / 1e6:.2f}M parameters)"
        f" config={asdict(booster.config)['base_model']}"
    )


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    if args.denoise_weight <= 0 and args.targets is None and args.data is None and args.lora_targets is None:
        parser.error("--denoise-weight 0 trains by regression only: give --targets or --data")
    if args.lora_targets is not None and (args.init_from is None or args.train_only != "lora"):
        parser.error("--lora-targets sets the LoRA head of a trained booster: give --init-from and --train-only lora")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()

    device = pick_device()
    base = load_base(resolve_base_model(args.base_model, load_registry()), device)
    booster, teacher = _build(args, base, device, parser)
    trained = _trained_parameters(args, booster)
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0)
    checkpoint = args.work_dir / "booster.pt"
    start, earlier_seconds = _resume(checkpoint, booster, optimizer)
    args.work_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = PlaceholderTokenizers(base, [TOKEN])
    batched = tokenizer.batched(base, booster.config.lora_layout)
    views = args.input_views + args.target_views
    sampler = SetSampler(
        base,
        args.targets,
        args.data,
        views=views,
        world_share=args.world_share,
        pool_views=max(views, args.pool_views),
        vector_targets=args.vector_targets,
        teacher_share=args.teacher_share if teacher is not None else 0.0,
    )
    if args.lora_targets is not None and start == 0:
        booster.config.training["lora_head_fit"] = _fit_lora_head_from(args.lora_targets, booster, base)
        print(f"LoRA head from {args.lora_targets}: {booster.config.training['lora_head_fit']}")
    run = _Run(args, base, booster, teacher, device, tokenizer, batched, sampler)
    rng = np.random.default_rng([args.seed, start])
    generator = torch.Generator().manual_seed(args.seed * 7919 + start)
    progress = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="booster")
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, steps=args.steps, peak=args.lr)
        loss = _step_loss(run, rng, generator)
        optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:  # regression only, and no set of this step had a target: nothing to learn
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            _checkpoint(checkpoint, booster, optimizer, step + 1, earlier_seconds + time.time() - started)
    run.batched.close()
    _save(args, booster, earlier_seconds + time.time() - started)


if __name__ == "__main__":
    main()
