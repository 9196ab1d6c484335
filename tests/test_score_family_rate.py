"""The family's learning-rate scale (FamilyHooks.learning_rate_scale): read with a default of 1."""

import dataclasses

from vitools import FullRank
from vitools.families.base import FamilyHooks, family_hooks


def test_a_family_without_the_attribute_keeps_the_objectives_rate():
    assert FamilyHooks().learning_rate_scale == 1.0
    assert family_hooks(FullRank()).learning_rate_scale == 1.0


def test_a_familys_own_scale_is_read():
    @dataclasses.dataclass(frozen=True)
    class Slow:
        name: str = "slow"
        learning_rate_scale: float = 0.5

    assert family_hooks(Slow()).learning_rate_scale == 0.5
