"""Deadlines inside the searches' inner loops.

A time budget is only kept if every loop whose iterations grow with the
graph looks at the clock: one greedy variant, one beam level, one order
evaluation or one lower-bound pass takes seconds on a graph of a few
thousand vertices.  Loops that have a partial result to give (annealing,
the bounds) stop and return it; the others raise :class:`OutOfTime`, which
the caller catches where an incumbent is at hand.  Deadlines are
``time.perf_counter()`` values; None means no limit.
"""
from __future__ import annotations

import time
from typing import Optional


class OutOfTime(Exception):
    """The deadline passed before the phase had a result."""


def passed(deadline: Optional[float]) -> bool:
    """Whether ``deadline`` (None: never) has passed."""
    return deadline is not None and time.perf_counter() > deadline


def check(deadline: Optional[float]) -> None:
    """Raise :class:`OutOfTime` once ``deadline`` has passed."""
    if deadline is not None and time.perf_counter() > deadline:
        raise OutOfTime
