"""One seeded sampling helper for every dataset.

Each draw is seeded by (seed, epoch, index), so a group is the same whenever the same example is asked for
in the same epoch (any worker, any process, any order) and changes from one epoch to the next.
"""
from __future__ import annotations

import numpy as np


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A generator private to one example of one epoch."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def fill_to(items: list, size: int) -> list:
    """Repeat ``items`` in order until there are ``size`` of them (cut when there are more)."""
    if not items:
        return []
    reps = -(-size // len(items))
    return (items * reps)[:size]
