"""Policy files: a trained network with its settings, and using it on a graph.

A policy file is msgpack (``flax.serialization``; no pickle) holding the
network config, the search config, training metadata and the parameters.
:func:`default_policy` loads the one shipped inside the package.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Optional

import flax.serialization
import jax
import numpy as np

from ccjax.search.mcts import MCTSConfig
from ccjax.search.network import NetworkConfig

#: The pretrained policy shipped with ccjax.
SHIPPED_POLICY = os.path.join(os.path.dirname(__file__), "policy", "policy.msgpack")


class PolicyError(ValueError):
    """A policy file is missing, unreadable or of another format."""


@dataclasses.dataclass(frozen=True)
class Policy:
    network: NetworkConfig
    params: dict
    search: MCTSConfig
    info: dict


def save_policy(path: str, net: NetworkConfig, params, search: MCTSConfig, info: Optional[dict] = None) -> None:
    """Write a policy file atomically."""
    payload = {
        "format": "ccjax-policy-1",
        "network": json.dumps(net.to_dict()),
        "search": json.dumps(search.to_dict()),
        "info": json.dumps(info or {}),
        "params": jax.tree_util.tree_map(np.asarray, params),
    }
    data = flax.serialization.msgpack_serialize(payload)
    tmp = f"{path}.tmp-{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def load_policy(path: str) -> Policy:
    """Read a policy file; :class:`PolicyError` if it is not one.

    The parameters stay NumPy arrays: loading runs no JAX operation, which
    would be staged into whatever function is being traced when
    ``jacve(order="learned")`` first asks for the policy (under ``jit``),
    leaving tracers in the cached policy."""
    try:
        with open(path, "rb") as f:
            raw = flax.serialization.msgpack_restore(f.read())
        if raw.get("format") != "ccjax-policy-1":
            raise ValueError(f"unknown format {raw.get('format')!r}")
        net = NetworkConfig(**json.loads(raw["network"]))
        search = MCTSConfig(**json.loads(raw["search"]))
        info = json.loads(raw["info"])
        params = jax.tree_util.tree_map(np.asarray, raw["params"])
    except FileNotFoundError:
        raise PolicyError(f"no policy file at {path}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise PolicyError(f"{path} is not a readable ccjax policy file: {e}") from e
    return Policy(net, params, search, info)


@functools.lru_cache(maxsize=4)
def _cached(path: str, mtime: float) -> Policy:
    return load_policy(path)


def policy_version(path: Optional[str] = None) -> tuple:
    """``(path, modification time)`` of the policy file (time None if missing)."""
    path = SHIPPED_POLICY if path is None else path
    try:
        return path, os.path.getmtime(path)
    except OSError:
        return path, None


def default_policy(path: Optional[str] = None) -> Policy:
    """The shipped policy (or the file at ``path``), loaded once per file version."""
    path = SHIPPED_POLICY if path is None else path
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        raise PolicyError(f"no policy file at {path}") from None
    return _cached(path, mtime)
