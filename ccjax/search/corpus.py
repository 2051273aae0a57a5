"""Graphs to train and evaluate the policy on.

The training corpus is the example tasks minus the held-out ones plus
seeded random functions (:func:`ccjax.tasks.random_fn.random_function`):
scalar ones like task ``g`` and tensor ones like task ``f``.  Everything is
deterministic in the seeds, so a resumed run rebuilds the same corpus and
the graph indices stored in its replay buffer keep their meaning.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ccjax.trace import graph as trace_graph
from ccjax.graph import Graph
from ccjax.search.tables import CapacityError, EncodedGraph, encode

#: Tasks kept out of training (zero-shot evaluation); RobotArm and Encoder
#: are also larger than the default training capacity.
HELD_OUT = ("RobotArm_6DOF", "HumanHeartDipole", "Encoder")


@dataclasses.dataclass(frozen=True)
class CorpusItem:
    name: str
    graph: Graph
    encoded: EncodedGraph


def task_graph(name: str) -> Graph:
    """The paper's graph of an example task."""
    from ccjax.tasks import get_task

    task = get_task(name)
    fn, args = task.graph_fn_and_inputs(0)
    return trace_graph(fn, *args, argnums=task.argnums)


def random_graph(seed: int) -> tuple[str, Graph]:
    """A random function's graph: scalar (even seeds) or tensor (odd seeds)."""
    from ccjax.tasks.random_fn import (ELEMENTWISE_FAMILIES, PAPER_FAMILIES, random_function,
                                       random_input_shapes, random_inputs)

    rng = np.random.default_rng(seed)
    if seed % 2 == 0:
        shapes = [()] * int(rng.integers(4, 14))
        fn = random_function(seed, shapes, n_ops=int(rng.integers(12, 40)), ops=ELEMENTWISE_FAMILIES,
                             n_outputs=int(rng.integers(1, 4)), nested=False)
    else:
        shapes = list(random_input_shapes(seed, max_rank=2))
        fn = random_function(seed, shapes, n_ops=int(rng.integers(8, 30)), ops=PAPER_FAMILIES,
                             n_outputs=int(rng.integers(1, 4)), nested=False)
    args = random_inputs(seed, shapes)
    return f"random_{seed}", trace_graph(fn, *args, argnums=tuple(range(len(args))))


def build(task_names: Sequence[str], random_seeds: Sequence[int], num_vertices: int, num_structures: int,
          min_eliminable: int = 4) -> list[CorpusItem]:
    """Encode the named tasks and random functions; graphs that do not fit
    the capacities, or have fewer than ``min_eliminable`` intermediates, are
    skipped (random ones silently, tasks with a ``CapacityError``)."""
    items = []
    for name in task_names:
        g = task_graph(name)
        items.append(CorpusItem(name, g, encode(g, num_vertices, num_structures)))
    for seed in random_seeds:
        name, g = random_graph(int(seed))
        if len(g.eliminable) < min_eliminable:
            continue
        try:
            items.append(CorpusItem(name, g, encode(g, num_vertices, num_structures)))
        except CapacityError:
            continue
    return items
