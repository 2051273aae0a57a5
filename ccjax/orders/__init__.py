"""Elimination-order strategies that need no learning.

* :mod:`~ccjax.orders.heuristics`: forward, reverse and Markowitz
  (:data:`HEURISTICS`, what ``order="fwd"|"rev"|"markowitz"`` names);
* :mod:`~ccjax.orders.greedy`: greedy variants on the incremental
  evaluator (:mod:`~ccjax.orders.incremental`), the quick ones among them
  being what ``order="auto"`` tries without a cached order;
* :mod:`~ccjax.orders.search`: beam search, annealing and branch and bound
  under a time budget.

Turning an order *name* into an order (cache, learned policy) is the job of
:mod:`ccjax.resolve`, one layer up; nothing here imports it.
"""
from ccjax.orders.heuristics import HEURISTICS, forward, markowitz, reverse

__all__ = ["HEURISTICS", "forward", "reverse", "markowitz"]
