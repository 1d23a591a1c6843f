"""Topologies by name, for flags and for the strategies' `topology` argument."""

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from tf_decentral.topology import _checks
from tf_decentral.topology import base
from tf_decentral.topology import graphs
from tf_decentral.topology import time_varying


def _torus_of(
    num_nodes: int, rows: int | None = None, cols: int | None = None
) -> base.Topology:
    """Returns a `rows x cols` torus of `num_nodes` nodes.

    Without `rows` and `cols`, `rows` is the largest divisor of `num_nodes`
    that is at most `sqrt(num_nodes)` (1 for a prime, giving a ring); with
    one of them, the other is `num_nodes` divided by it.
    """
    num_nodes = _checks.check_int(num_nodes, "num_nodes", minimum=1)
    if rows is None and cols is None:
        divisors = np.arange(1, math.isqrt(num_nodes) + 1)
        rows = int(divisors[num_nodes % divisors == 0].max())
    if rows is not None and cols is not None:
        rows = _checks.check_int(rows, "rows", minimum=1)
        cols = _checks.check_int(cols, "cols", minimum=1)
        if rows * cols != num_nodes:
            raise ValueError(
                f"`rows` * `cols` must equal num_nodes={num_nodes}. "
                f"Received: rows={rows}, cols={cols}"
            )
        return graphs.torus(rows, cols)
    arg_name, side = ("rows", rows) if cols is None else ("cols", cols)
    side = _checks.check_int(side, arg_name, minimum=1)
    if num_nodes % side:
        raise ValueError(
            f"`{arg_name}` must divide num_nodes={num_nodes}. "
            f"Received: {arg_name}={side}"
        )
    if arg_name == "rows":
        return graphs.torus(side, num_nodes // side)
    return graphs.torus(num_nodes // side, side)


# Name -> (constructor taking `num_nodes` first, its keyword options).
_BUILDERS: dict[str, tuple[Callable[..., base.Topology], tuple[str, ...]]] = {
    "ring": (graphs.ring, ()),
    "torus": (_torus_of, ("rows", "cols")),
    "exponential": (graphs.exponential, ()),
    "complete": (graphs.complete, ()),
    "one_peer_exponential": (time_varying.one_peer_exponential, ()),
    "random_matching": (time_varying.random_matching, ("seed", "period")),
}

NAMES: tuple[str, ...] = tuple(_BUILDERS)
"""The topology names `get` accepts."""


def get(name: str, num_nodes: int, **kwargs: object) -> base.Topology:
    """Returns the topology called `name` over `num_nodes` nodes.

    Names and their options (all keyword-only):

    * `"ring"`, `"exponential"`, `"complete"`, `"one_peer_exponential"`: none.
    * `"torus"`: `rows`, `cols`. By default `rows` is the largest divisor of
      `num_nodes` that is at most `sqrt(num_nodes)` and
      `cols = num_nodes // rows`; give either or both to choose the grid.
    * `"random_matching"`: `seed`, `period`, as in `random_matching`.

    Args:
        name: One of `NAMES`.
        num_nodes: Number of nodes, `>= 1`.
        **kwargs: Options of the named topology, listed above.

    Returns:
        The `Topology`.

    Raises:
        TypeError: If `name` is not a string, or an option is unknown for
            `name` or of the wrong type.
        ValueError: If `name` is unknown or an argument is out of range.

    Example:
        >>> from tf_decentral import topology
        >>> topology.get("torus", 12)
        Topology(name='torus', num_nodes=12, period=1)
        >>> topology.get("torus", 12).neighbors(0)
        (1, 3, 4, 8)
        >>> topology.get("random_matching", 8, seed=1, period=16).period
        16
    """
    if not isinstance(name, str):
        raise TypeError(
            "`name` must be a string. "
            f"Received: name={name!r} of type {type(name).__name__}"
        )
    if name not in _BUILDERS:
        raise ValueError(
            f"`name` must be one of {', '.join(map(repr, NAMES))}. "
            f"Received: name={name!r}"
        )
    builder, options = _BUILDERS[name]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        valid = ", ".join(options) if options else "none"
        raise TypeError(
            f"Unknown option(s) for topology {name!r}: {', '.join(unknown)}. "
            f"Valid options: {valid}. Received: {kwargs}"
        )
    return builder(num_nodes, **kwargs)


def resolve(
    spec: str | base.Topology | npt.ArrayLike, num_nodes: int
) -> base.Topology:
    """Returns the `Topology` that `spec` describes, checked to fit.

    This is how the strategies read their `topology` argument, so the error
    messages call `spec` `topology`.

    Args:
        spec: A name from `NAMES` (built with `get`), a `Topology`, or an
            array-like of mixing weights of shape `(n, n)` or
            `(period, n, n)` (built with `Topology(spec)`).
        num_nodes: The number of nodes the topology must have: one per
            replica or worker.

    Returns:
        A `Topology` with `num_nodes` nodes.

    Raises:
        TypeError: If `spec` is of another type.
        ValueError: If `spec` is invalid or has a different number of nodes.

    Example:
        >>> import numpy as np
        >>> from tf_decentral import topology
        >>> topology.resolve("ring", 4)
        Topology(name='ring', num_nodes=4, period=1)
        >>> topology.resolve(np.full((2, 2), 0.5), 2)
        Topology(num_nodes=2, period=1)
        >>> topology.resolve(topology.ring(6), 4)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: `topology` must have num_nodes=4 nodes (one per ...
    """
    num_nodes = _checks.check_int(num_nodes, "num_nodes", minimum=1)
    if isinstance(spec, str):
        return get(spec, num_nodes)
    if isinstance(spec, base.Topology):
        topology = spec
    elif isinstance(spec, np.ndarray | list | tuple) or hasattr(
        spec, "__array__"
    ):
        topology = base.Topology(spec)
    else:
        raise TypeError(
            f"`topology` must be a name (one of {', '.join(map(repr, NAMES))})"
            ", a `Topology`, or an array-like of shape (n, n) or "
            f"(period, n, n). Received: topology={spec!r} of type "
            f"{type(spec).__name__}"
        )
    if topology.num_nodes != num_nodes:
        raise ValueError(
            f"`topology` must have num_nodes={num_nodes} nodes (one per "
            "replica/worker). "
            f"Received: a topology with {topology.num_nodes} nodes."
        )
    return topology
