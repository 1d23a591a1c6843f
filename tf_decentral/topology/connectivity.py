"""Who talks to whom: a topology's undirected graph and its structure.

A mixing matrix says how much node `i` weights node `j`; strategies that
pair workers up (`AsyncGossipStrategy`) only need *whether* two nodes ever
talk. `adjacency` turns a topology (static or time-varying) into that
undirected graph; `connected_components` and `two_coloring` answer the two
questions such a strategy asks of it: can every node reach every other
through neighbours, and can the nodes split into two sides with every edge
across (a bipartite graph, e.g. an even ring)?
"""

import numpy as np
import numpy.typing as npt

from tf_decentral.topology import _checks
from tf_decentral.topology import base


def adjacency(topology: base.Topology | npt.ArrayLike) -> np.ndarray:
    """Returns the undirected graph of every round of `topology`.

    Nodes `i != j` are adjacent when `W_t[i, j] > 0` or `W_t[j, i] > 0` in
    any round `t` of the topology's period.

    Args:
        topology: A `Topology`, or mixing weights of shape `(n, n)` or
            `(period, n, n)` (not checked to be doubly stochastic).

    Returns:
        A symmetric boolean matrix of shape `(n, n)` with a False diagonal.

    Raises:
        TypeError: If `topology` is not a `Topology` nor numeric.
        ValueError: If the weights are not of shape `(n, n)` or
            `(period, n, n)`.

    Example:
        >>> from tf_decentral import topology
        >>> topology.adjacency(topology.ring(4)).astype(int)
        array([[0, 1, 0, 1],
               [1, 0, 1, 0],
               [0, 1, 0, 1],
               [1, 0, 1, 0]])
        >>> # Peers i +- 1, i +- 2 and i + 4 over the 3 rounds of a period:
        >>> topology.adjacency(topology.one_peer_exponential(8)).sum(axis=1)
        array([5, 5, 5, 5, 5, 5, 5, 5])
    """
    if isinstance(topology, base.Topology):
        table = np.stack(
            [topology.weights(step) for step in range(topology.period)]
        )
    else:
        table = _checks.as_float_array(topology, "topology")
        if table.ndim == 2:
            table = table[np.newaxis]
        if table.ndim != 3 or table.shape[1] != table.shape[2]:
            raise ValueError(
                "`topology` weights must have shape (n, n) or (period, n, "
                f"n). Received: shape {np.shape(topology)}"
            )
    edges = np.any(table > 0, axis=0)
    edges = edges | edges.T
    np.fill_diagonal(edges, False)
    return edges


def connected_components(adjacency: npt.ArrayLike) -> list:
    """Returns the nodes of each connected component of a graph.

    Args:
        adjacency: A symmetric boolean (or 0/1) matrix of shape `(n, n)`.

    Returns:
        One sorted list of nodes per component, ordered by their smallest
        node (the first holds node 0).

    Example:
        >>> import numpy as np
        >>> from tf_decentral import topology
        >>> two_pairs = np.kron(np.eye(2), [[0, 1], [1, 0]])
        >>> topology.connected_components(two_pairs)
        [[0, 1], [2, 3]]
        >>> topology.connected_components(topology.adjacency(topology.ring(3)))
        [[0, 1, 2]]
    """
    edges = np.asarray(adjacency, dtype=bool)
    n = edges.shape[0]
    component = [-1] * n
    components = []
    for root in range(n):
        if component[root] >= 0:
            continue
        component[root] = len(components)
        members, frontier = [root], [root]
        while frontier:
            node = frontier.pop()
            for other in np.flatnonzero(edges[node]).tolist():
                if component[other] < 0:
                    component[other] = component[root]
                    members.append(other)
                    frontier.append(other)
        components.append(sorted(members))
    return components


def two_coloring(adjacency: npt.ArrayLike) -> list | None:
    """Returns a colour 0 or 1 per node with no edge inside a colour, or None.

    Each connected component's smallest node gets colour 0. None means the
    graph is not bipartite (it has an odd cycle).

    Args:
        adjacency: A symmetric boolean (or 0/1) matrix of shape `(n, n)`.

    Example:
        >>> from tf_decentral import topology
        >>> topology.two_coloring(topology.adjacency(topology.ring(6)))
        [0, 1, 0, 1, 0, 1]
        >>> topology.two_coloring(topology.adjacency(topology.ring(5))) is None
        True
    """
    edges = np.asarray(adjacency, dtype=bool)
    n = edges.shape[0]
    colour = [-1] * n
    for root in range(n):
        if colour[root] >= 0:
            continue
        colour[root] = 0
        frontier = [root]
        while frontier:
            node = frontier.pop()
            for other in np.flatnonzero(edges[node]).tolist():
                if colour[other] < 0:
                    colour[other] = 1 - colour[node]
                    frontier.append(other)
                elif colour[other] == colour[node]:
                    return None
    return colour
