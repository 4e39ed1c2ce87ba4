import random

import numpy as np
import pytest

from editflow.world import FAMILIES, caption, render, sample_batch, sample_scene
from editflow.world.captions import mentions


def test_rendering_is_deterministic_per_seed(world):
    a, b = sample_batch(world, 16, seed=3), sample_batch(world, 16, seed=3)
    assert a.captions == b.captions
    assert np.array_equal(a.images.numpy(), b.images.numpy())
    c = sample_batch(world, 16, seed=4)
    assert not np.array_equal(a.images.numpy(), c.images.numpy())


def test_batch_shape_and_range(world):
    batch = sample_batch(world, 8, seed=0)
    assert batch.images.shape == (8, 3, world.image_size, world.image_size)
    assert batch.images.min() >= -1 and batch.images.max() <= 1


def test_world_has_the_promised_concepts(world):
    named = {f: [c for c in world.family(f) if "null" not in c.tags] for f in FAMILIES}
    assert len([c for c in named["object"] if "unsafe" not in c.tags]) >= 8
    assert len([c for c in named["object"] if "unsafe" in c.tags]) >= 3
    assert len(named["colour"]) >= 6
    assert len(named["style"]) >= 4 and len(named["identity"]) >= 4
    with_synonyms = [c for f in FAMILIES for c in named[f] if c.synonyms]
    assert len(with_synonyms) > 0.75 * sum(len(v) for v in named.values())


def test_captions_name_the_scene(world):
    rng = random.Random(0)
    for _ in range(300):
        scene = sample_scene(rng, world)
        text = caption(scene, rng, world)
        for family, name in mentions(text, world).items():
            assert scene.labels()[family] == name, (text, scene)


def test_captions_use_synonyms(world):
    rng = random.Random(1)
    words = {w for _ in range(500) for w in caption(sample_scene(rng, world), rng, world).split()}
    synonyms = {s for c in world.concepts() for s in c.synonyms}
    assert len(words & synonyms) >= len(synonyms) // 2


def test_identities_have_fixed_looks(world):
    rng = random.Random(2)
    for name, look in world.identity_looks.items():
        s = sample_scene(rng, world, identity=name)
        assert (s.object, s.colour, s.style) == (look.body, look.colour, "plain")


def test_styles_change_pixels(world):
    rng = random.Random(5)
    base = sample_scene(rng, world, identity="nobody", object="square", colour="red", style="plain")
    plain = np.asarray(render(base, world), np.float32)
    for style in ("kasimir", "odalys", "brenwick", "tamsin"):
        styled = np.asarray(render(base.__class__(**{**base.to_dict(), "style": style}), world), np.float32)
        assert np.abs(styled - plain).mean() > 5, style


def test_unknown_concept_lists_known(world):
    with pytest.raises(ValueError, match="known concepts: circle"):
        world.concept("unicorn")
