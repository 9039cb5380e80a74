"""The procedural concept world leap-tiny is trained on: coloured, patterned shapes.

A concept is (shape, colour, pattern). Colours are RGB so that unnamed in-between
colours exist; every view varies rotation, scale, position and background noise.
Rendering is a pure function of (concept, seed): the same inputs give the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "lime": (150, 225, 40),
    "green": (25, 140, 45),
    "teal": (15, 130, 130),
    "cyan": (45, 215, 235),
    "blue": (35, 60, 215),
    "purple": (115, 40, 175),
    "magenta": (220, 40, 200),
    "pink": (250, 155, 195),
    "brown": (125, 75, 30),
}
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")

SUPERSAMPLE = 4


@dataclass(frozen=True)
class Concept:
    """One thing to draw. `colour` is RGB; `colour_name` is None for in-between colours."""

    shape: str
    colour: tuple[int, int, int]
    pattern: str
    colour_name: str | None = None

    @classmethod
    def named(cls, shape: str, colour: str, pattern: str = "solid") -> Concept:
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}")
        if pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {pattern!r}")
        return cls(shape=shape, colour=COLOURS[colour], pattern=pattern, colour_name=colour)

    def caption(self) -> str:
        """The plain caption, e.g. "a photo of a red striped star"."""
        colour = self.colour_name or "coloured"
        return f"a photo of a {colour} {self.pattern} {self.shape}"

    @property
    def slug(self) -> str:
        colour = self.colour_name or "rgb{:02x}{:02x}{:02x}".format(*self.colour)
        return f"{colour}-{self.pattern}-{self.shape}"


def _shape_points(shape: str) -> list[list[tuple[float, float]]]:
    """Polygons in a unit frame (radius ~1 around the origin)."""
    if shape == "circle":
        return [[(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 48, endpoint=False)]]
    if shape == "square":
        return [[(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]]
    if shape == "triangle":
        return [[(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]]
    if shape == "star":
        points = []
        for i in range(10):
            radius = 1.0 if i % 2 == 0 else 0.42
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((radius * math.cos(angle), radius * math.sin(angle)))
        return [points]
    if shape == "hexagon":
        return [[(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)]]
    if shape == "diamond":
        return [[(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]]
    if shape == "cross":
        w = 0.32
        return [
            [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        ]
    if shape == "heart":
        points = []
        for t in np.linspace(0, 2 * math.pi, 64, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            points.append((x / 17.0, y / 17.0 + 0.1))
        return [points]
    raise ValueError(f"unknown shape {shape!r}")


def _pattern_fill(pattern: str, colour: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB texture of the concept's colour and pattern, randomly phased and oriented."""
    fill = np.empty((size, size, 3), dtype=np.float64)
    fill[:] = colour
    if pattern == "solid":
        return fill
    # A pale tint of the colour keeps the hue recognisable in every pattern.
    light = colour * 0.25 + 255 * 0.75
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = rng.uniform(0, math.pi)
    u = xs * math.cos(angle) + ys * math.sin(angle)
    v = -xs * math.sin(angle) + ys * math.cos(angle)
    period = size / 5.0
    phase_u, phase_v = rng.uniform(0, period, size=2)
    if pattern == "striped":
        mask = ((u + phase_u) % period) < period / 2
    elif pattern == "checkered":
        mask = (((u + phase_u) // (period * 0.75)) + ((v + phase_v) // (period * 0.75))) % 2 == 0
    elif pattern == "dotted":
        cu = ((u + phase_u) % period) - period / 2
        cv = ((v + phase_v) % period) - period / 2
        mask = (cu**2 + cv**2) < (period * 0.28) ** 2
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    fill[mask] = light
    return fill


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Neutral noisy background: a random grey level with a gentle gradient and pixel noise."""
    level = rng.uniform(25, 90) if rng.random() < 0.5 else rng.uniform(170, 235)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / size
    gx, gy = rng.uniform(-18, 18, size=2)
    base = level + gx * (xs - 0.5) + gy * (ys - 0.5)
    tint = rng.uniform(-8, 8, size=3)
    noise = rng.normal(0, 5, size=(size, size, 3))
    return base[..., None] + tint + noise


def render(concept: Concept, seed: int, size: int = 32) -> Image.Image:
    """Render one view of a concept; identical for identical (concept, seed, size)."""
    rng = np.random.default_rng(
        [
            seed,
            size,
            *concept.colour,
            SHAPES.index(concept.shape) if concept.shape in SHAPES else 99,
            PATTERNS.index(concept.pattern),
        ]
    )
    big = size * SUPERSAMPLE
    scale = rng.uniform(0.28, 0.42) * big
    angle = rng.uniform(-0.5, 0.5) if concept.shape in ("heart", "triangle") else rng.uniform(0, 2 * math.pi)
    margin = scale * 1.05
    cx = rng.uniform(margin, big - margin) if big - 2 * margin > 0 else big / 2
    cy = rng.uniform(margin, big - margin) if big - 2 * margin > 0 else big / 2
    cos_a, sin_a = math.cos(angle), math.sin(angle)

    mask_image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask_image)
    for polygon in _shape_points(concept.shape):
        points = [(cx + scale * (x * cos_a - y * sin_a), cy + scale * (x * sin_a + y * cos_a)) for x, y in polygon]
        draw.polygon(points, fill=255)
    mask = np.asarray(mask_image, dtype=np.float64)[..., None] / 255.0

    colour = np.asarray(concept.colour, dtype=np.float64)
    jitter = rng.normal(0, 4, size=3)  # lighting varies a little between views
    fill = _pattern_fill(concept.pattern, np.clip(colour + jitter, 0, 255), big, rng)
    canvas = _background(big, rng) * (1 - mask) + fill * mask
    image = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), mode="RGB")
    return image.resize((size, size), Image.Resampling.LANCZOS)


def all_named_concepts() -> list[Concept]:
    """Every named (shape, colour, pattern) combination, in a fixed order."""
    return [Concept.named(s, c, p) for s in SHAPES for c in COLOURS for p in PATTERNS]


# Held out of base-model training: one colour per shape (and so every pattern of that pair).
# The quality check scores captions of these pairs as "held-out combinations".
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    (shape, list(COLOURS)[(3 * index + 5) % len(COLOURS)]) for index, shape in enumerate(SHAPES)
)


def is_held_out(concept: Concept) -> bool:
    return (concept.shape, concept.colour_name) in HELD_OUT_PAIRS


def mix_colours(a: str, b: str, weight: float = 0.5) -> tuple[int, int, int]:
    """An unnamed in-between colour."""
    ca, cb = np.asarray(COLOURS[a], float), np.asarray(COLOURS[b], float)
    mixed = ca * (1 - weight) + cb * weight
    return (int(round(mixed[0])), int(round(mixed[1])), int(round(mixed[2])))


def nearest_colour(rgb: tuple[int, int, int]) -> str:
    """The named colour closest in RGB (used to score in-between colours)."""
    return min(COLOURS, key=lambda name: sum((x - y) ** 2 for x, y in zip(COLOURS[name], rgb, strict=True)))
