"""The LEAP booster: a set of images -> a starting embedding and LoRA for one base model.

Per-image CNN features are pooled order-invariantly (mean and max over the set), then two
heads predict the token's vectors and coefficients over a basis of LoRA up-projections, in the
base model's own LoRA layout (the peft keys and shapes the trainer uses).

A LoRA's factors are not identifiable (B A = (B R^-1)(R A) for any invertible R), so LoRAs fitted
from their own random down-projections do not live in one space and a regressor over them learns
their mean. The booster therefore fixes the down-projections A once per base model (seeded, drawn
as peft's gaussian init draws them, stored with the weights) and predicts only B; a job started
from the booster trains from that same A, with B predicted or zero (HyperDreamBooth's
Lightweight DreamBooth fixes its down-projections for the same reason).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_FILE = "booster.json"
WEIGHTS_FILE = "booster.safetensors"


@dataclass
class BoosterConfig:
    """Stored beside the weights; loading checks it against the base model."""

    base_model: str
    base_fingerprint: str
    embedding_width: int
    lora_rank: int
    lora_layout: dict[str, list[int]]
    """peft state-dict key of each LoRA tensor -> its shape, in the trainer's order."""
    image_size: int = 32
    num_vectors: int = 1
    feature_width: int = 128
    hidden_width: int = 256
    basis_size: int = 16
    use_lora: bool = True
    """False where the LoRA prediction was measured to hurt on the development concepts: then jobs
    take only the predicted embedding (see booster.json's `use_lora_note`)."""
    use_lora_note: str = ""
    lora_down_seed: int = 0
    """Seeds the fixed LoRA down-projections (`fixed_lora_down`): every booster of a base model uses
    the same seed, so its jobs share one A whichever booster starts them."""
    vector_heads: list[int] = field(default_factory=list)
    """Extra token-vector counts with their own head (e.g. [2, 4]): a job asking for one of them gets
    that many distinct predicted vectors; any other count gets the 1-vector prediction in every slot."""
    training: dict = field(default_factory=dict)

    @property
    def lora_numel(self) -> int:
        """Entries of the predicted part of the LoRA: the up-projections (B) of every targeted layer."""
        return sum(int(torch.Size(shape).numel()) for key, shape in self.lora_layout.items() if is_up(key))

    @property
    def lora_down_numel(self) -> int:
        return sum(int(torch.Size(shape).numel()) for key, shape in self.lora_layout.items() if not is_up(key))


def is_up(key: str) -> bool:
    """True for a LoRA up-projection (peft's lora_B) key."""
    return ".lora_B." in key


def fixed_lora_down(layout: dict[str, list[int]], rank: int, seed: int) -> torch.Tensor:
    """The base model's fixed down-projections, flat in layout order: N(0, 1/rank) as peft's gaussian
    init draws a fresh A, so a booster-started LoRA learns at the rate a fresh one does."""
    generator = torch.Generator().manual_seed(seed)
    parts = [
        torch.randn(int(torch.Size(shape).numel()), generator=generator) / rank
        for key, shape in layout.items()
        if not is_up(key)
    ]
    return torch.cat(parts)


class ImageEncoder(nn.Module):
    """Small CNN: one image -> one feature vector."""

    def __init__(self, width: int) -> None:
        super().__init__()
        channels = (32, 64, width)
        layers: list[nn.Module] = []
        previous = 3
        for out in channels:
            layers += [
                nn.Conv2d(previous, out, 3, padding=1),
                nn.GroupNorm(8, out),
                nn.SiLU(),
                nn.Conv2d(out, out, 3, padding=1, stride=2),
                nn.GroupNorm(8, out),
                nn.SiLU(),
            ]
            previous = out
        self.layers = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class Booster(nn.Module):
    lora_down: torch.Tensor
    """The fixed down-projections (a buffer, saved with the weights), flat in layout order."""

    def __init__(self, config: BoosterConfig, initial_embedding: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = ImageEncoder(config.feature_width)
        self.mlp = nn.Sequential(
            nn.Linear(2 * config.feature_width, config.hidden_width),
            nn.SiLU(),
            nn.Linear(config.hidden_width, config.hidden_width),
            nn.SiLU(),
        )
        self.embedding_head = nn.Linear(config.hidden_width, config.num_vectors * config.embedding_width)
        self.vector_heads = nn.ModuleDict(
            {str(n): nn.Linear(config.hidden_width, n * config.embedding_width) for n in config.vector_heads}
        )
        self.coefficient_head = nn.Linear(config.hidden_width, config.basis_size)
        self.lora_basis = nn.Parameter(torch.randn(config.basis_size, config.lora_numel) * 1e-3)
        self.lora_mean = nn.Parameter(torch.zeros(config.lora_numel))
        self.register_buffer("lora_down", fixed_lora_down(config.lora_layout, config.lora_rank, config.lora_down_seed))
        with torch.no_grad():
            # Start exactly at the trainer's token init, so training can only improve on it.
            self.embedding_head.weight.mul_(0.01)
            for n, head in self.vector_heads.items():
                assert isinstance(head, nn.Linear)
                head.weight.mul_(0.01)
                if initial_embedding is not None:
                    head.bias.copy_(initial_embedding.reshape(-1).repeat(int(n)))
            if initial_embedding is not None:
                self.embedding_head.bias.copy_(initial_embedding.reshape(-1).repeat(config.num_vectors))
            self.coefficient_head.weight.mul_(0.01)
            self.coefficient_head.bias.zero_()

    def hidden(self, images: torch.Tensor) -> torch.Tensor:
        """images [sets, views, 3, H, W] in [-1, 1] -> pooled set features [sets, hidden_width]."""
        sets, views = images.shape[:2]
        features = self.encoder(images.flatten(0, 1)).view(sets, views, -1)
        return self.mlp(torch.cat([features.mean(1), features.amax(1)], dim=-1))

    def vectors(self, hidden: torch.Tensor, num_vectors: int) -> torch.Tensor:
        """The head for `num_vectors` distinct vectors ([sets, num_vectors, width]); KeyError if there is none."""
        head = self.embedding_head if num_vectors == self.config.num_vectors else self.vector_heads[str(num_vectors)]
        return head(hidden).view(hidden.shape[0], num_vectors, self.config.embedding_width)

    def lora_up(self, hidden: torch.Tensor) -> torch.Tensor:
        """The predicted up-projections, flat ([sets, lora_numel]): the mean plus coefficients over the basis."""
        return self.lora_mean + self.coefficient_head(hidden) @ self.lora_basis

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [sets, views, 3, H, W] in [-1, 1] -> (embedding [sets, vectors, width], up-projections
        [sets, lora_numel])."""
        hidden = self.hidden(images)
        return self.vectors(hidden, self.config.num_vectors), self.lora_up(hidden)

    def supported_vectors(self) -> list[int]:
        """Token-vector counts this booster predicts distinct vectors for."""
        return sorted({self.config.num_vectors, *self.config.vector_heads})

    def unflatten_lora(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat up-projections [..., lora_numel] -> every peft-keyed tensor [..., *shape]: B from `flat`,
        A the fixed down-projection (expanded over the leading dimensions)."""
        tensors: dict[str, torch.Tensor] = {}
        offset = {True: 0, False: 0}
        lead = flat.shape[:-1]
        for key, shape in self.config.lora_layout.items():
            up, count = is_up(key), int(torch.Size(shape).numel())
            source = flat if up else self.lora_down.to(flat).expand(*lead, -1)
            tensors[key] = source[..., offset[up] : offset[up] + count].reshape(*lead, *shape)
            offset[up] += count
        return tensors

    def scaled_lora(self, tensors: dict[str, torch.Tensor], *, lora_alpha: float | None) -> dict[str, torch.Tensor]:
        """Peft tensors for a job whose LoRA scales by lora_alpha / rank: the booster predicts at scale 1,
        so B is divided by that scale (the delta B A stays the predicted one)."""
        scale = 1.0 if lora_alpha is None else lora_alpha / self.config.lora_rank
        return {key: value / scale if is_up(key) else value for key, value in tensors.items()}

    def zero_lora(self) -> dict[str, torch.Tensor]:
        """The LoRA a booster-started job trains from without the predicted one: the fixed A, B = 0."""
        return self.unflatten_lora(torch.zeros(self.config.lora_numel))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(directory / WEIGHTS_FILE))


def load_booster(directory: Path) -> Booster:
    config = BoosterConfig(**json.loads((directory / CONFIG_FILE).read_text()))
    booster = Booster(config)
    booster.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return booster.eval()
