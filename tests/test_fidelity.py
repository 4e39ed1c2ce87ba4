"""The shipped generator meets its fidelity bars (slow: generates a few hundred images)."""

import pytest

from editflow.evaluation.world_check import FIDELITY_BARS, generator_fidelity


@pytest.mark.slow
def test_generator_fidelity_meets_bars(embedded_pipe, judge, world):
    scores = generator_fidelity(embedded_pipe, judge, world, per_class=12)
    for family, bar in FIDELITY_BARS.items():
        assert scores[family].accuracy >= bar, (family, scores[family].to_dict())


def test_generator_follows_prompts_quick(embedded_pipe, judge, world):
    """A fast version for `make test`: fewer images, the same bars minus sampling slack."""
    scores = generator_fidelity(embedded_pipe, judge, world, per_class=3, seed=4242)
    for family, bar in FIDELITY_BARS.items():
        assert scores[family].accuracy >= bar - 0.1, (family, scores[family].to_dict())
