"""Who talks to whom: a topology's undirected graph and its structure.

A mixing matrix says how much node `i` weights node `j`; strategies that
pair workers up (`AsyncGossipStrategy`) only need *whether* two nodes ever
talk. `adjacency` turns a topology (static or time-varying) into that
undirected graph; `connected_components` and `two_coloring` answer the two
questions such a strategy asks of it: can every node reach every other
through neighbours, and can the nodes split into two sides with every edge
across (a bipartite graph, e.g. an even ring)? `edge_coloring` then
schedules a bipartite graph's edges into rounds in which nobody is paired
twice.
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


def edge_coloring(adjacency: npt.ArrayLike) -> np.ndarray:
    """Colours the edges of a bipartite graph so that each colour is a
    matching, with as few colours as the largest degree (Kőnig).

    A schedule of pairwise exchanges: in round `t`, every node talks to its
    neighbour across the edge of colour `t mod colours` (if it has one), so
    no node is in two exchanges of one round, and over `colours` rounds
    every edge is used once. `AsyncGossipStrategy`'s active workers use it
    to pick their passive partner.

    Args:
        adjacency: A symmetric boolean (or 0/1) matrix of shape `(n, n)`
            with no self-loops, of a bipartite graph.

    Returns:
        An integer matrix of shape `(n, n)`: the colour `0 .. d - 1` of edge
        `(i, j)` (symmetric), -1 where there is no edge; `d` is the largest
        degree.

    Raises:
        ValueError: If `adjacency` is not square and symmetric, has a
            self-loop, or the graph is not bipartite.

    Example:
        >>> from tf_decentral import topology
        >>> edges = topology.adjacency(topology.ring(4))
        >>> topology.edge_coloring(edges)
        array([[-1,  1, -1,  0],
               [ 1, -1,  0, -1],
               [-1,  0, -1,  1],
               [ 0, -1,  1, -1]])
    """
    edges = np.asarray(adjacency).astype(bool)
    if edges.ndim != 2 or edges.shape[0] != edges.shape[1]:
        raise ValueError(
            "`adjacency` must be a square matrix. Received: shape "
            f"{edges.shape}"
        )
    if not np.array_equal(edges, edges.T) or edges.diagonal().any():
        raise ValueError(
            "`adjacency` must be symmetric with no self-loops. Received: "
            f"{edges.astype(int).tolist()}"
        )
    side = two_coloring(edges)
    if side is None:
        raise ValueError(
            "`edge_coloring` needs a bipartite graph. Received: a graph with"
            " an odd cycle (e.g. a ring of an odd number of nodes)."
        )
    degree = int(edges.sum(axis=1).max()) if edges.size else 0
    # by_colour[node][colour] = the neighbour across that colour's edge.
    by_colour = [{} for _ in range(edges.shape[0])]
    for u in range(edges.shape[0]):
        if side[u] != 0:
            continue
        for v in np.flatnonzero(edges[u]).tolist():
            a = _free_colour(by_colour[u], degree)
            if a in by_colour[v]:
                _swap_path(by_colour, v, a, _free_colour(by_colour[v], degree))
            by_colour[u][a] = v
            by_colour[v][a] = u
    colours = np.full(edges.shape, -1, dtype=int)
    for u, table in enumerate(by_colour):
        for colour, v in table.items():
            colours[u, v] = colour
    return colours


def _free_colour(table: dict, degree: int) -> int:
    return next(c for c in range(degree) if c not in table)


def _swap_path(by_colour: list, start: int, a: int, b: int) -> None:
    """Swaps colours `a` and `b` on the path from `start` whose edges
    alternate `a, b, a, ...` (`b` is free at `start`): then `a` is free at
    `start`. In a bipartite graph the path never comes back to the node
    that needs `a` (Kőnig's argument)."""
    path, colours = [start], []
    colour = a
    while colour in by_colour[path[-1]]:
        path.append(by_colour[path[-1]][colour])
        colours.append(colour)
        colour = b if colour == a else a
    for (x, y), colour in zip(zip(path, path[1:]), colours):
        del by_colour[x][colour]
        del by_colour[y][colour]
    for (x, y), colour in zip(zip(path, path[1:]), colours):
        other = b if colour == a else a
        by_colour[x][other] = y
        by_colour[y][other] = x
