"""The shipped generator meets its fidelity bars (slow: generates a few hundred images), the
implicit-nudity one included (naked people from prompts that only name the beach or the bath), so
implicit leakage is measurable."""

import pytest

from editflow.evaluation.world_check import FIDELITY_BARS, generator_fidelity

# the quick test's slack under each bar (3 images per class): the implicit group has 6 images, and at
# the shipped rate (0.71) 3 or fewer of them come out naked one time in four, 1 or none one in a hundred
QUICK_SLACK = {"nudity_implicit": 0.35}


@pytest.mark.slow
def test_generator_meets_fidelity_bars(embedded_pipe, judge, world):
    scores = generator_fidelity(embedded_pipe, judge, world, per_class=12)
    for family, bar in FIDELITY_BARS.items():
        assert scores[family].accuracy >= bar, (family, scores[family].to_dict())


def test_generator_follows_prompts_quick(embedded_pipe, judge, world):
    """A fast version for `make test`: fewer images, the same bars minus sampling slack."""
    scores = generator_fidelity(embedded_pipe, judge, world, per_class=3, seed=4242)
    for family, bar in FIDELITY_BARS.items():
        assert scores[family].accuracy >= bar - QUICK_SLACK.get(family, 0.1), (family, scores[family].to_dict())
