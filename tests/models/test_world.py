import numpy as np

from models.reference.concepts import HELD_OUT_VIEWS, TRAIN_VIEWS, benchmark_concepts
from models.reference.train_tiny import ReferenceTrainConfig, training_concepts
from models.reference.world import COLOURS, PATTERNS, SHAPES, Concept, is_held_out, mix_colours, render


def test_world_has_the_promised_axes():
    assert len(SHAPES) >= 8 and len(COLOURS) >= 12 and len(PATTERNS) >= 2


def test_render_is_deterministic_per_seed_and_varies_across_seeds():
    concept = Concept.named("star", "red", "striped")
    first, again, other = render(concept, 3), render(concept, 3), render(concept, 4)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()
    assert first.size == (32, 32) and first.mode == "RGB"


def test_in_between_colours_render_and_are_not_named():
    rgb = mix_colours("red", "orange")
    assert rgb not in COLOURS.values()
    image = render(Concept(shape="circle", colour=rgb, pattern="solid"), 0, size=48)
    assert image.size == (48, 48)


def test_shape_colour_is_visible_in_the_render():
    image = np.asarray(render(Concept.named("square", "blue", "solid"), 0), dtype=float)
    blue = np.asarray(COLOURS["blue"], dtype=float)
    assert (np.abs(image - blue).sum(axis=-1) < 60).mean() > 0.05


def test_base_model_training_never_sees_held_out_pairs():
    concepts = training_concepts(np.random.default_rng(0), 2000, ReferenceTrainConfig())
    assert not any(is_held_out(c) for c in concepts if c.colour_name)


def test_benchmark_concepts_are_unseen_and_split():
    dev, val = benchmark_concepts("dev"), benchmark_concepts("val")
    assert dev and val and not {c.name for c in dev} & {c.name for c in val}
    for item in dev + val:
        assert item.concept.colour_name is None or is_held_out(item.concept)
        views, held_out = item.views(), item.held_out_views()
        assert len(views) == TRAIN_VIEWS >= 8 and len(held_out) == HELD_OUT_VIEWS
        assert not {v.tobytes() for v in views} & {v.tobytes() for v in held_out}
