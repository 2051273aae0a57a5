"""ccjax: exact Jacobians by cross-country (vertex) elimination in JAX.

``ccjax.jacve`` is a drop-in replacement for ``jax.jacrev``/``jax.jacfwd``
whose elimination order decides how many multiplications it needs.

The public names are loaded on first use (PEP 562), so that ``import
ccjax.cli`` (``ccjax --help``, ``ccjax cache list``) does not pay for
importing JAX.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and tests/test_layers.py
    from ccjax.api import cost, cost_report, graph, jacve
    from ccjax.eliminate import CostReport, OrderError
    from ccjax.graph import Graph
    from ccjax.orders.search import SearchResult
    from ccjax.resolve import search_order
    from ccjax.tuning import TuneResult, tune

__version__ = "0.1.0"

__all__ = ["jacve", "graph", "cost", "cost_report", "Graph", "CostReport", "OrderError", "search_order",
           "SearchResult", "tune", "TuneResult"]

#: Public name -> the module defining it.
_HOMES = {"jacve": "ccjax.api", "graph": "ccjax.api", "cost": "ccjax.api", "cost_report": "ccjax.api",
          "Graph": "ccjax.graph", "CostReport": "ccjax.eliminate", "OrderError": "ccjax.eliminate",
          "search_order": "ccjax.resolve", "SearchResult": "ccjax.orders.search", "tune": "ccjax.tuning",
          "TuneResult": "ccjax.tuning"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ccjax' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package module.  Importing the submodule ``ccjax.graph`` binds it
    as the package attribute ``graph``, which would hide the function
    ``ccjax.graph`` (eager imports used to rebind it); public names are
    never bound to submodules (``sys.modules`` still holds them)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOMES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
