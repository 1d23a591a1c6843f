"""Static topologies: ring, torus, exponential, complete and any graph.

Each constructor returns a `Topology` whose single mixing matrix `W` follows
the package convention: `W[i, j]` is the weight node `i` gives to node `j`'s
value, and one gossip round is `x_i <- sum_j W[i, j] x_j`. The regular graphs
(ring, torus, exponential, complete) weight a node and its distinct neighbors
uniformly, `1 / (degree + 1)` each; `from_adjacency` uses Metropolis-Hastings
weights, which are doubly stochastic on any undirected graph.
"""

import numpy as np
import numpy.typing as npt

from tf_decentral.topology import _checks
from tf_decentral.topology import base


def _circulant_adjacency(num_nodes: int, offsets: npt.ArrayLike) -> np.ndarray:
    """Returns `A` with `A[i, (i + s) % n] = 1` for each distinct `s != 0`."""
    offsets = np.unique(np.asarray(offsets, dtype=np.int64) % num_nodes)
    offsets = offsets[offsets != 0]
    nodes = np.arange(num_nodes)[:, np.newaxis]
    adjacency = np.zeros((num_nodes, num_nodes))
    adjacency[nodes, (nodes + offsets) % num_nodes] = 1.0
    return adjacency


def _uniform_weights(adjacency: np.ndarray) -> np.ndarray:
    """Returns `(I + A) / (degree + 1)` for the adjacency `A` of a regular
    graph (every in- and out-degree equal), which is doubly stochastic."""
    degree = adjacency.sum(axis=1, keepdims=True)
    return (np.eye(adjacency.shape[0]) + adjacency) / (degree + 1.0)


def ring(num_nodes: int) -> base.Topology:
    """Returns the undirected ring: every node averages with its two sides.

    Node `i` weights itself and its distinct cyclic neighbors `i - 1` and
    `i + 1` (mod `num_nodes`) equally: `1/3` each for `num_nodes >= 3`, `1/2`
    each for 2 nodes, and `W = [[1]]` for one. `W` is symmetric, with
    eigenvalues `1/3 + 2/3 cos(2 pi k / n)`, so the spectral gap shrinks as
    `Theta(1 / n^2)`.

    Args:
        num_nodes: Number of nodes, `>= 1`.

    Returns:
        A static, symmetric `Topology` named `"ring"`.

    Raises:
        TypeError: If `num_nodes` is not an integer.
        ValueError: If `num_nodes < 1`.

    Example:
        >>> from tf_decentral import topology
        >>> 3 * topology.ring(4).weights()
        array([[1., 1., 0., 1.],
               [1., 1., 1., 0.],
               [0., 1., 1., 1.],
               [1., 0., 1., 1.]])
        >>> round(topology.ring(4).spectral_gap(), 4)
        0.6667

    References:
        Lian et al. 2017, "Can Decentralized Algorithms Outperform
        Centralized Algorithms? A Case Study for Decentralized Parallel
        Stochastic Gradient Descent", NeurIPS 2017.
        https://arxiv.org/abs/1705.09056
    """
    num_nodes = _checks.check_int(num_nodes, "num_nodes", minimum=1)
    adjacency = _circulant_adjacency(num_nodes, [1, -1])
    return base.Topology(_uniform_weights(adjacency), name="ring")


def torus(rows: int, cols: int) -> base.Topology:
    """Returns the 2-D torus: a wrap-around grid of `rows x cols` nodes.

    Node `i = r * cols + c` sits at row `r`, column `c`, and weights itself
    and its distinct neighbors up, down, left and right (with wrap-around)
    equally. Neighbors coincide when `rows` or `cols` is at most 2 (and a
    side of length 1 adds none), so a `1 x n` torus is `ring(n)`. `W` is
    symmetric; for `rows, cols >= 3` its eigenvalues are
    `(1 + 2 cos(2 pi a / rows) + 2 cos(2 pi b / cols)) / 5`.

    Args:
        rows: Number of grid rows, `>= 1`.
        cols: Number of grid columns, `>= 1`.

    Returns:
        A static, symmetric `Topology` named `"torus"` with `rows * cols`
        nodes.

    Raises:
        TypeError: If `rows` or `cols` is not an integer.
        ValueError: If `rows` or `cols` is smaller than 1.

    Example:
        >>> from tf_decentral import topology
        >>> grid = topology.torus(3, 4)
        >>> grid.num_nodes, grid.neighbors(0)
        (12, (1, 3, 4, 8))
        >>> round(grid.spectral_gap(), 4)
        0.4
    """
    rows = _checks.check_int(rows, "rows", minimum=1)
    cols = _checks.check_int(cols, "cols", minimum=1)
    vertical = _circulant_adjacency(rows, [1, -1])
    horizontal = _circulant_adjacency(cols, [1, -1])
    # Kronecker sum: (r, c) ~ (r', c) along columns, (r, c) ~ (r, c') along
    # rows; the two never overlap because neither cycle has self-loops.
    adjacency = np.kron(vertical, np.eye(cols)) + np.kron(
        np.eye(rows), horizontal
    )
    return base.Topology(_uniform_weights(adjacency), name="torus")


def exponential(num_nodes: int) -> base.Topology:
    """Returns the static exponential graph of Ying et al. 2021.

    Node `i` mixes in nodes `(i + 2^k) mod n` for `k = 0 .. ceil(log2 n) - 1`
    (distinct, never `i` itself), weighting them and itself uniformly. Every
    node has `ceil(log2 n)` neighbors and the spectral gap is
    `Theta(1 / log2 n)`, against `Theta(1 / n^2)` for a ring. `W` is a
    circulant matrix, doubly stochastic but in general not symmetric (node `i`
    receives from `i + 2^k` and sends to `i - 2^k`).

    Args:
        num_nodes: Number of nodes, `>= 1`.

    Returns:
        A static `Topology` named `"exponential"`.

    Raises:
        TypeError: If `num_nodes` is not an integer.
        ValueError: If `num_nodes < 1`.

    Example:
        >>> from tf_decentral import topology
        >>> graph = topology.exponential(8)
        >>> graph.neighbors(0), graph.out_neighbors(0)
        ((1, 2, 4), (4, 6, 7))
        >>> graph.weights()[0]
        array([0.25, 0.25, 0.25, 0.  , 0.25, 0.  , 0.  , 0.  ])

    References:
        Ying et al. 2021, "Exponential Graph is Provably Efficient for
        Decentralized Deep Training", NeurIPS 2021.
        https://arxiv.org/abs/2110.13363
    """
    num_nodes = _checks.check_int(num_nodes, "num_nodes", minimum=1)
    # ceil(log2(n)) computed exactly on integers.
    num_hops = (num_nodes - 1).bit_length()
    adjacency = _circulant_adjacency(num_nodes, 2 ** np.arange(num_hops))
    return base.Topology(_uniform_weights(adjacency), name="exponential")


def complete(num_nodes: int) -> base.Topology:
    """Returns the complete graph: every round is the exact average.

    Every entry of `W` is `1 / num_nodes`, so `W = J = 11^T / n` and one
    gossip round equals an all-reduce mean. The spectral gap is 1.

    Args:
        num_nodes: Number of nodes, `>= 1`.

    Returns:
        A static, symmetric `Topology` named `"complete"`.

    Raises:
        TypeError: If `num_nodes` is not an integer.
        ValueError: If `num_nodes < 1`.

    Example:
        >>> from tf_decentral import topology
        >>> topology.complete(4).weights()[0]
        array([0.25, 0.25, 0.25, 0.25])
        >>> topology.complete(4).spectral_gap()
        1.0
    """
    num_nodes = _checks.check_int(num_nodes, "num_nodes", minimum=1)
    weights = np.full((num_nodes, num_nodes), 1.0 / num_nodes)
    return base.Topology(weights, name="complete")


def from_adjacency(adjacency: npt.ArrayLike) -> base.Topology:
    """Returns Metropolis-Hastings weights for an undirected graph.

    With `d_i` the degree of node `i`, every edge `(i, j)` gets
    `W[i, j] = 1 / (1 + max(d_i, d_j))` and every node keeps the rest,
    `W[i, i] = 1 - sum_{j != i} W[i, j]`. `W` is symmetric and doubly
    stochastic for any graph, and each node needs only its neighbors'
    degrees to compute its row.

    Args:
        adjacency: Array-like of shape `(n, n)` with entries 0 or 1 (or
            booleans), symmetric; `adjacency[i, j] = 1` means `i` and `j` are
            neighbors. The diagonal is ignored.

    Returns:
        A static, symmetric `Topology`.

    Raises:
        TypeError: If `adjacency` is not numeric.
        ValueError: If `adjacency` is not square, not symmetric, has entries
            other than 0 and 1, or describes a disconnected graph.

    Example:
        >>> from tf_decentral import topology
        >>> path = [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
        >>> 3 * topology.from_adjacency(path).weights()
        array([[2., 1., 0.],
               [1., 1., 1.],
               [0., 1., 2.]])

    References:
        Xiao, Boyd & Lall 2005, "A Scheme for Robust Distributed Sensor
        Fusion Based on Average Consensus", IPSN 2005.
    """
    matrix = _checks.as_float_array(adjacency, "adjacency")
    if (
        matrix.ndim != 2
        or matrix.shape[0] != matrix.shape[1]
        or not matrix.size
    ):
        raise ValueError(
            "`adjacency` must be a non-empty square matrix of shape (n, n). "
            f"Received: adjacency with shape {matrix.shape}"
        )
    np.fill_diagonal(matrix, 0.0)
    if not np.all((matrix == 0.0) | (matrix == 1.0)):
        raise ValueError(
            "`adjacency` must contain only 0 and 1 (or booleans) off the "
            "diagonal. Received: adjacency with values "
            f"{np.unique(matrix).tolist()}"
        )
    if not np.array_equal(matrix, matrix.T):
        i, j = np.argwhere(matrix != matrix.T)[0].tolist()
        raise ValueError(
            "`adjacency` must be symmetric (an undirected graph). Received: "
            f"adjacency[{i}, {j}]={matrix[i, j]:g} but "
            f"adjacency[{j}, {i}]={matrix[j, i]:g}"
        )
    degree = matrix.sum(axis=1)
    weights = matrix / (1.0 + np.maximum.outer(degree, degree))
    np.fill_diagonal(weights, 1.0 - weights.sum(axis=1))
    return base.Topology(weights)
