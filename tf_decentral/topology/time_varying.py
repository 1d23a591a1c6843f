"""Time-varying topologies: one peer per round.

A time-varying `Topology` repeats a period of mixing matrices: round `t` uses
`W_t = weights[t % period]`. Each node talks to a single peer per round here,
so a round costs one message per node, yet over a period the information
spreads through the whole network.
"""

import numpy as np

from tf_decentral.topology import _checks
from tf_decentral.topology import base


def _pairwise_average(partners: np.ndarray) -> np.ndarray:
    """Returns `W_t = (I + P_t) / 2` where `P_t[i, partners[t, i]] = 1`."""
    eye = np.eye(partners.shape[1])
    return 0.5 * (eye + eye[partners])


def one_peer_exponential(num_nodes: int) -> base.Topology:
    """Returns the one-peer exponential graph of Ying et al. 2021.

    The period is `tau = max(1, ceil(log2 n))`. In round `t`, node `i`
    averages with node `(i + 2^(t mod tau)) mod n` only:
    `W_t = (I + P_t) / 2`, with `P_t` that cyclic shift. `W_t` is doubly
    stochastic but not symmetric (node `i` receives from `i + 2^t` and sends
    to `i - 2^t`). When `n` is a power of 2, one period averages exactly:
    `W_{tau-1} ... W_1 W_0 = J = 11^T / n`, so the spectral gap is 1.

    Args:
        num_nodes: Number of nodes, `>= 1`.

    Returns:
        A `Topology` named `"one_peer_exponential"` with period
        `max(1, ceil(log2 num_nodes))`.

    Raises:
        TypeError: If `num_nodes` is not an integer.
        ValueError: If `num_nodes < 1`.

    Example:
        >>> from tf_decentral import topology
        >>> graph = topology.one_peer_exponential(8)
        >>> [graph.neighbors(0, step) for step in range(4)]
        [(1,), (2,), (4,), (1,)]
        >>> graph.spectral_gap()
        1.0

    References:
        Ying et al. 2021, "Exponential Graph is Provably Efficient for
        Decentralized Deep Training", NeurIPS 2021.
        https://arxiv.org/abs/2110.13363
    """
    num_nodes = _checks.check_int(num_nodes, "num_nodes", minimum=1)
    # ceil(log2(n)) computed exactly on integers.
    period = max(1, (num_nodes - 1).bit_length())
    shifts = 2 ** np.arange(period)[:, np.newaxis]
    partners = (np.arange(num_nodes) + shifts) % num_nodes
    return base.Topology(
        _pairwise_average(partners), name="one_peer_exponential"
    )


def random_matching(
    num_nodes: int, seed: int = 0, period: int = 64
) -> base.Topology:
    """Returns random pairwise gossip: a random perfect matching per round.

    Each of the `period` rounds draws a uniformly random perfect matching of
    the nodes (pairing consecutive entries of a random permutation drawn by
    `np.random.default_rng(seed)`); matched nodes average their values
    (weights 0.5 and 0.5). With an odd number of nodes, one node per round
    sits out (weight 1 on itself). Every `W_t` is symmetric. The rounds
    repeat after `period`, and the result depends only on `num_nodes`, `seed`
    and `period` (for a given NumPy version), so every worker that builds it
    with the same arguments gets the same matchings.

    Args:
        num_nodes: Number of nodes, `>= 1`.
        seed: Seed of the random generator, `>= 0`. Use the same seed on
            every worker.
        period: Number of distinct rounds, `>= 1`.

    Returns:
        A symmetric `Topology` named `"random_matching"`.

    Raises:
        TypeError: If an argument is not an integer.
        ValueError: If an argument is out of range, or if the `period`
            matchings drawn do not together connect all nodes.

    Example:
        >>> from tf_decentral import topology
        >>> graph = topology.random_matching(6, seed=0, period=8)
        >>> graph.period, graph.max_degree, graph.is_symmetric
        (8, 1, True)
        >>> all(len(graph.neighbors(i, step=3)) == 1 for i in range(6))
        True

    References:
        Boyd et al. 2006, "Randomized Gossip Algorithms", IEEE Transactions
        on Information Theory 52(6).
    """
    num_nodes = _checks.check_int(num_nodes, "num_nodes", minimum=1)
    seed = _checks.check_int(seed, "seed", minimum=0)
    period = _checks.check_int(period, "period", minimum=1)
    rng = np.random.default_rng(seed)
    nodes = np.tile(np.arange(num_nodes), (period, 1))
    order = rng.permuted(nodes, axis=1)
    # Pair order[t, 0] with order[t, 1], order[t, 2] with order[t, 3], ...;
    # with n odd the last node of each row keeps itself as its partner.
    paired = num_nodes - num_nodes % 2
    first, second = order[:, 0:paired:2], order[:, 1:paired:2]
    rounds = np.arange(period)[:, np.newaxis]
    partners = nodes.copy()
    partners[rounds, first] = second
    partners[rounds, second] = first
    try:
        return base.Topology(
            _pairwise_average(partners), name="random_matching"
        )
    except ValueError as err:
        raise ValueError(
            "`period` must be long enough for the random matchings to "
            "connect all nodes, or gossip would never reach consensus; "
            "increase `period` or change `seed`. Received: "
            f"num_nodes={num_nodes}, seed={seed}, period={period}"
        ) from err
