"""ccjax: exact Jacobians by cross-country (vertex) elimination in JAX.

``ccjax.jacve`` is a drop-in replacement for ``jax.jacrev``/``jax.jacfwd``
whose elimination order decides how many multiplications it needs.
"""
from ccjax.api import cost, cost_report, graph, jacve
from ccjax.eliminate import CostReport, OrderError
from ccjax.graph import Graph
from ccjax.orders.search import SearchResult
from ccjax.resolve import search_order

__version__ = "0.1.0"

__all__ = ["jacve", "graph", "cost", "cost_report", "Graph", "CostReport", "OrderError", "search_order",
           "SearchResult"]
