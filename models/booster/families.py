"""Procedural concept families beyond the shape world: what the booster trains and is judged on.

A concept is (family, params); a view is a pure function of (concept, seed): position, scale,
rotation, lighting and background vary between views as in models.reference.world. There are no
photographs on this machine to train on, so "natural-like" content is synthesised (fractal-noise
textures in random palettes: clouds, terrain, bark/marble-like veins). scikit-image's sample
images are reserved for evaluation and never drawn here.

TRAIN_FAMILIES feed the booster's fitted targets; HELD_OUT_FAMILIES never do (whole families, so
the benchmark measures generalisation to kinds of content the booster has not seen).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from models.reference.world import COLOURS, PATTERNS, SHAPES, Concept, _background, _shape_points, render

SUPER = 2
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans.ttf", "DejaVuSerif-Bold.ttf")
LETTERS = "ABCDEFGHKMNPRSTUVWXYZ0123456789&?@#"


def _colour(rng: np.random.Generator) -> list[int]:
    if rng.random() < 0.4:
        return list(COLOURS[str(rng.choice(list(COLOURS)))])
    return [int(v) for v in rng.integers(0, 256, size=3)]


def _pose(rng: np.random.Generator, big: int, lo: float = 0.28, hi: float = 0.42) -> tuple[float, float, float, float]:
    scale = rng.uniform(lo, hi) * big
    margin = scale * 1.05
    cx = rng.uniform(margin, big - margin) if big - 2 * margin > 0 else big / 2
    cy = rng.uniform(margin, big - margin) if big - 2 * margin > 0 else big / 2
    return scale, cx, cy, rng.uniform(0, 2 * math.pi)


def _polygon(shape: str, scale: float, cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + scale * (x * c - y * s), cy + scale * (x * s + y * c)) for x, y in _shape_points(shape)[0]]


def _finish(canvas: np.ndarray, size: int) -> Image.Image:
    image = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), mode="RGB")
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _jitter(rng: np.random.Generator, colour: list[int]) -> np.ndarray:
    return np.clip(np.asarray(colour, dtype=np.float64) + rng.normal(0, 4, size=3), 0, 255)


def _composite(rng: np.random.Generator, big: int, mask: np.ndarray, fill: np.ndarray) -> np.ndarray:
    return _background(big, rng) * (1 - mask[..., None]) + fill * mask[..., None]


def _mask(big: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    image = Image.new("L", (big, big), 0)
    draw(ImageDraw.Draw(image))
    return np.asarray(image, dtype=np.float64) / 255.0


def _fractal(rng: np.random.Generator, size: int, octaves: int, persistence: float) -> np.ndarray:
    """Value noise summed over octaves, in [0, 1]."""
    total = np.zeros((size, size))
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        cells = 2 ** (octave + 1)
        grid = rng.random((cells + 1, cells + 1))
        small = Image.fromarray((grid * 255).astype(np.uint8))
        layer = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
        total += amplitude * layer
        norm += amplitude
        amplitude *= persistence
    total /= norm
    return (total - total.min()) / max(total.max() - total.min(), 1e-6)


# --- families: draw(rng) -> params; view(params, seed, size) -> image --------------------------------


def _draw_outlined(rng):
    return {"shape": str(rng.choice(SHAPES)), "colour": _colour(rng), "width": float(rng.uniform(0.08, 0.2))}


def _view_outlined(p, rng, size):
    big = size * SUPER
    scale, cx, cy, angle = _pose(rng, big)
    points = _polygon(p["shape"], scale, cx, cy, angle)
    mask = _mask(big, lambda d: d.line(points + points[:1], fill=255, width=max(1, int(p["width"] * scale))))
    return _finish(_composite(rng, big, mask, _jitter(rng, p["colour"])), size)


def _draw_twocolour(rng):
    return {"shape": str(rng.choice(SHAPES)), "colours": [_colour(rng), _colour(rng)]}


def _view_twocolour(p, rng, size):
    big = size * SUPER
    scale, cx, cy, angle = _pose(rng, big)
    mask = _mask(big, lambda d: d.polygon(_polygon(p["shape"], scale, cx, cy, angle), fill=255))
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float64)
    side = ((xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)) < 0
    fill = np.where(side[..., None], _jitter(rng, p["colours"][0]), _jitter(rng, p["colours"][1]))
    return _finish(_composite(rng, big, mask, fill), size)


def _draw_checker(rng):
    return {"colours": [_colour(rng), _colour(rng)], "cells": float(rng.uniform(2.5, 7))}


def _two_tone(p, rng, size, field: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    big = size * SUPER
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float64) / big
    angle = rng.uniform(0, math.pi)
    u = xs * math.cos(angle) + ys * math.sin(angle) + rng.uniform(0, 1)
    v = -xs * math.sin(angle) + ys * math.cos(angle) + rng.uniform(0, 1)
    weight = field(u, v)[..., None]
    a, b = _jitter(rng, p["colours"][0]), _jitter(rng, p["colours"][1])
    canvas = a * weight + b * (1 - weight) + rng.normal(0, 4, size=(big, big, 3))
    return _finish(canvas, size)


def _view_checker(p, rng, size):
    n = p["cells"] * rng.uniform(0.9, 1.1)
    return _two_tone(p, rng, size, lambda u, v: ((np.floor(u * n) + np.floor(v * n)) % 2).astype(np.float64))


def _draw_stripes(rng):
    return {
        "colours": [_colour(rng), _colour(rng)],
        "period": float(rng.uniform(0.12, 0.35)),
        "angle": float(rng.uniform(0, math.pi)),
        "duty": float(rng.uniform(0.3, 0.7)),
    }


def _view_stripes(p, rng, size):
    big = size * SUPER
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float64) / big
    angle = p["angle"] + rng.normal(0, 0.08)
    u = xs * math.cos(angle) + ys * math.sin(angle) + rng.uniform(0, 1)
    weight = (((u / p["period"]) % 1.0) < p["duty"]).astype(np.float64)[..., None]
    a, b = _jitter(rng, p["colours"][0]), _jitter(rng, p["colours"][1])
    return _finish(a * weight + b * (1 - weight) + rng.normal(0, 4, size=(big, big, 3)), size)


def _draw_gradient(rng):
    return {"colours": [_colour(rng), _colour(rng)], "radial": bool(rng.random() < 0.4)}


def _view_gradient(p, rng, size):
    if p["radial"]:
        cx, cy = rng.uniform(0.3, 0.7, size=2)
        return _two_tone(
            p,
            rng,
            size,
            lambda u, v: np.clip(
                1
                - 1.4 * np.hypot(*np.meshgrid(np.linspace(0, 1, u.shape[1]) - cx, np.linspace(0, 1, u.shape[0]) - cy)),
                0,
                1,
            ),
        )
    return _two_tone(p, rng, size, lambda u, v: np.clip(u - u.min(), 0, 1) / max(np.ptp(u), 1e-6))


def _draw_noise(rng):
    """Natural-like textures: clouds, terrain, marble/bark veins in a random 3-colour palette."""
    return {
        "palette": [_colour(rng), _colour(rng), _colour(rng)],
        "octaves": int(rng.integers(2, 6)),
        "persistence": float(rng.uniform(0.35, 0.7)),
        "veins": bool(rng.random() < 0.35),
    }


def _view_noise(p, rng, size):
    big = size * SUPER
    value = _fractal(rng, big, p["octaves"], p["persistence"])
    if p["veins"]:
        value = np.abs(np.sin(value * 12.0))
    palette = [_jitter(rng, c) for c in p["palette"]]
    low = np.clip(value * 2, 0, 1)[..., None]
    high = np.clip(value * 2 - 1, 0, 1)[..., None]
    canvas = np.where(
        value[..., None] < 0.5, palette[0] * (1 - low) + palette[1] * low, palette[1] * (1 - high) + palette[2] * high
    )
    return _finish(canvas + rng.normal(0, 3, size=(big, big, 3)), size)


def _draw_blobs(rng):
    return {"colour": _colour(rng), "count": int(rng.integers(1, 5)), "soft": float(rng.uniform(0.5, 2.5))}


def _view_blobs(p, rng, size):
    big = size * SUPER

    def draw(d):
        for _ in range(p["count"]):
            r = rng.uniform(0.1, 0.25) * big
            x, y = rng.uniform(r, big - r, size=2)
            d.ellipse([x - r, y - r * rng.uniform(0.6, 1.0), x + r, y + r], fill=255)

    mask = (
        np.asarray(
            Image.fromarray((_mask(big, draw) * 255).astype(np.uint8)).filter(
                ImageFilter.GaussianBlur(p["soft"] * SUPER)
            ),
            dtype=np.float64,
        )
        / 255.0
    )
    return _finish(_composite(rng, big, mask, _jitter(rng, p["colour"])), size)


def _draw_rings(rng):
    return {"colours": [_colour(rng), _colour(rng)], "rings": int(rng.integers(2, 5))}


def _view_rings(p, rng, size):
    big = size * SUPER
    scale, cx, cy, _ = _pose(rng, big, 0.3, 0.45)
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float64)
    radius = np.hypot(xs - cx, ys - cy) / scale
    inside = (radius < 1).astype(np.float64)
    band = (np.floor(radius * p["rings"]) % 2 == 0)[..., None]
    fill = np.where(band, _jitter(rng, p["colours"][0]), _jitter(rng, p["colours"][1]))
    return _finish(_composite(rng, big, inside, fill), size)


def _draw_world(rng):
    shape, pattern = str(rng.choice(SHAPES)), str(rng.choice(PATTERNS))
    return {"shape": shape, "colour": _colour(rng), "pattern": pattern}


def _view_world(p, rng, size):
    concept = Concept(shape=p["shape"], colour=tuple(p["colour"]), pattern=p["pattern"])
    return render(concept, int(rng.integers(2**31)), size)


def _draw_glyph(rng):
    return {"char": str(rng.choice(list(LETTERS))), "font": str(rng.choice(FONTS)), "colour": _colour(rng)}


def _view_glyph(p, rng, size):
    big = size * SUPER
    font = ImageFont.truetype(str(FONT_DIR / p["font"]), int(big * rng.uniform(0.55, 0.8)))
    layer = Image.new("L", (big, big), 0)
    ImageDraw.Draw(layer).text(
        (big / 2 + rng.uniform(-3, 3) * SUPER, big / 2 + rng.uniform(-3, 3) * SUPER),
        p["char"],
        fill=255,
        font=font,
        anchor="mm",
    )
    layer = layer.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR)
    mask = np.asarray(layer, dtype=np.float64) / 255.0
    return _finish(_composite(rng, big, mask, _jitter(rng, p["colour"])), size)


def _draw_face(rng):
    return {
        "skin": _colour(rng),
        "features": _colour(rng),
        "smile": bool(rng.random() < 0.6),
        "width": float(rng.uniform(0.7, 1.0)),
    }


def _view_face(p, rng, size):
    big = size * SUPER
    scale, cx, cy, _ = _pose(rng, big, 0.32, 0.44)
    w, h = scale * p["width"], scale
    head = _mask(big, lambda d: d.ellipse([cx - w, cy - h, cx + w, cy + h], fill=255))

    def features(d):
        for side in (-1, 1):
            ex, ey, er = cx + side * 0.4 * w, cy - 0.25 * h, 0.14 * scale
            d.ellipse([ex - er, ey - er, ex + er, ey + er], fill=255)
        box = [cx - 0.45 * w, cy + 0.05 * h, cx + 0.45 * w, cy + 0.6 * h]
        d.arc(box, 20, 160, fill=255, width=max(1, int(0.1 * scale))) if p["smile"] else d.line(
            [box[0], cy + 0.45 * h, box[2], cy + 0.45 * h], fill=255, width=max(1, int(0.1 * scale))
        )

    marks = _mask(big, features) * head
    canvas = _composite(rng, big, head, _jitter(rng, p["skin"]))
    canvas = canvas * (1 - marks[..., None]) + _jitter(rng, p["features"]) * marks[..., None]
    return _finish(canvas, size)


def _draw_voronoi(rng):
    return {
        "palette": [_colour(rng) for _ in range(3)],
        "cells": int(rng.integers(5, 14)),
        "edges": bool(rng.random() < 0.5),
    }


def _view_voronoi(p, rng, size):
    big = size * SUPER
    points = rng.random((p["cells"], 2)) * big
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float64)
    distance = (xs[..., None] - points[:, 0]) ** 2 + (ys[..., None] - points[:, 1]) ** 2
    order = np.argsort(distance, axis=-1)
    nearest = order[..., 0]
    palette = np.stack([_jitter(rng, c) for c in p["palette"]])
    canvas = palette[nearest % len(palette)]
    if p["edges"]:
        d = np.take_along_axis(distance, order[..., :2], axis=-1)
        edge = (np.sqrt(d[..., 1]) - np.sqrt(d[..., 0])) < 1.2 * SUPER
        canvas[edge] = 20.0
    return _finish(canvas + rng.normal(0, 4, size=canvas.shape), size)


FAMILIES: dict[str, tuple[Callable, Callable]] = {
    "world": (_draw_world, _view_world),
    "outlined": (_draw_outlined, _view_outlined),
    "twocolour": (_draw_twocolour, _view_twocolour),
    "checker": (_draw_checker, _view_checker),
    "stripes": (_draw_stripes, _view_stripes),
    "gradient": (_draw_gradient, _view_gradient),
    "noise": (_draw_noise, _view_noise),
    "blobs": (_draw_blobs, _view_blobs),
    "rings": (_draw_rings, _view_rings),
    "glyph": (_draw_glyph, _view_glyph),
    "face": (_draw_face, _view_face),
    "voronoi": (_draw_voronoi, _view_voronoi),
}
HELD_OUT_FAMILIES: tuple[str, ...] = ("glyph", "face", "voronoi")
TRAIN_FAMILIES: tuple[str, ...] = tuple(name for name in FAMILIES if name not in HELD_OUT_FAMILIES)


def draw_family_concept(family: str, rng: np.random.Generator) -> dict:
    """A random concept of one family: {"family": ..., "params": ...}."""
    return {"family": family, "params": FAMILIES[family][0](rng)}


def render_family(concept: dict, seed: int, size: int = 32) -> Image.Image:
    """One view of a family concept; identical for identical (concept, seed, size)."""
    rng = np.random.default_rng([seed, size, abs(hash_params(concept)) % 2**32])
    return FAMILIES[concept["family"]][1](concept["params"], rng, size)


def hash_params(concept: dict) -> int:
    """A stable (process-independent) hash of a concept's family and params."""
    import hashlib
    import json

    return int(hashlib.sha256(json.dumps(concept, sort_keys=True).encode()).hexdigest()[:8], 16)
