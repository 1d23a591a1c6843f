"""Gossip mixing between the workers of a TF cluster over TF's collectives.

One gossip round on node `i` computes `sum_j W_t[i, j] x_j` from its own
buffer and its in-neighbours' buffers. Every directed edge `j -> i` of the
round is one `broadcast_send_v2` on `j` and one `broadcast_recv_v2` on `i`,
in a two-member collective group per undirected pair `{i, j}`, with one
instance key per direction. Measured on 8 emulated hosts
(`shared/design/research/pairwise_exchange.md`), this costs about one to two
one-way latencies for one peer and for a ring alike, where a two-member
all-reduce costs three and edges chained on one ordering token serialize:

- Receives have no data input (their shape is static), so their pull request
  leaves when the step starts and overlaps with the compute.
- Broadcast ops are asynchronous stateful ops: automatic control dependencies
  never chain them, so issuing every edge at once cannot deadlock around the
  ring (reduce and gather collectives without a token can).
- Every collective in flight on a worker has its own instance key.

Time-varying topologies select round `t mod period` with `tf.switch_case`,
one branch per round, each with that round's static peers.
"""

import tensorflow as tf

from tf_decentral import _tf_private
from tf_decentral.ops import collective_keys
from tf_decentral.topology import Topology

# Keys far above the ones tf.distribute's CollectiveKeys hands out (it counts
# up from 1 per strategy), so ours never collide with the strategy's own.
GROUP_KEY_BASE = collective_keys.NEIGHBOR_GROUP_KEY_BASE
INSTANCE_KEY_BASE = collective_keys.NEIGHBOR_INSTANCE_KEY_BASE


def pair_group_key(a: int, b: int, num_nodes: int) -> int:
    """Returns the collective group key of the unordered pair `{a, b}`.

    Example:
        >>> pair_group_key(1, 3, 4) == pair_group_key(3, 1, 4)
        True
        >>> pair_group_key(1, 3, 4) == pair_group_key(1, 2, 4)
        False
    """
    lo, hi = min(a, b), max(a, b)
    return GROUP_KEY_BASE + lo * num_nodes + hi


def edge_instance_key(src: int, dst: int, num_nodes: int, slot: int) -> int:
    """Returns the instance key of the transfer `src -> dst` for `slot`.

    `slot` numbers independent exchanges that may be in flight at once
    within a step (one per packed buffer), so their keys never collide.

    Example:
        >>> edge_instance_key(1, 3, 4, slot=0) == edge_instance_key(3, 1, 4, 0)
        False
        >>> edge_instance_key(1, 3, 4, slot=0) == edge_instance_key(1, 3, 4, 1)
        False
    """
    lo, hi = min(src, dst), max(src, dst)
    pair = lo * num_nodes + hi
    return (
        INSTANCE_KEY_BASE
        + slot * 2 * num_nodes * num_nodes
        + 2 * pair
        + int(src > dst)
    )


def exchange_round(
    x, weights_row, node, step_peers, *, num_nodes, slot, timeout
):
    """Returns `sum_j weights_row[j] * x_j` for one static round.

    Args:
        x: This node's 1-D buffer.
        weights_row: Row `node` of the round's mixing matrix (NumPy).
        node: This node's index.
        step_peers: `(receive_from, send_to)` tuples of node indices.
        num_nodes: Number of nodes.
        slot: Exchange slot (see `edge_instance_key`).
        timeout: Seconds before a missing peer raises `DeadlineExceeded`.
    """
    receive_from, send_to = step_peers
    sends = []
    for peer in send_to:
        sends.append(
            _tf_private.broadcast_send(
                x,
                group_key=pair_group_key(node, peer, num_nodes),
                instance_key=edge_instance_key(node, peer, num_nodes, slot),
                timeout=timeout,
            )
        )
    total = tf.cast(weights_row[node], x.dtype) * x
    shape = tf.constant(x.shape.as_list(), tf.int32)
    for peer in receive_from:
        received = _tf_private.broadcast_recv(
            shape,
            x.dtype,
            group_key=pair_group_key(node, peer, num_nodes),
            instance_key=edge_instance_key(peer, node, num_nodes, slot),
            timeout=timeout,
        )
        total += tf.cast(weights_row[peer], x.dtype) * received
    if sends:
        # Automatic control dependencies do not keep an unused send alive.
        with tf.control_dependencies(sends):
            total = tf.identity(total)
    return total


def gossip_round(
    x, topology: Topology, node: int, step=0, *, slot=0, timeout=None
):
    """Returns node `node`'s mixed buffer `sum_j W_t[node, j] x_j`.

    Every node of the topology must call it with the same `step` and `slot`
    and a buffer of the same shape and dtype.

    Args:
        x: This node's 1-D buffer (statically known shape).
        topology: The mixing topology; its nodes are the cluster's workers.
        node: This node's index in `[0, topology.num_nodes)`.
        step: Round number `t` (int or scalar integer tensor).
        slot: Index of this exchange among those in flight in one step.
        timeout: Seconds before a missing peer raises a
            `tf.errors.DeadlineExceededError`; None waits forever.
    """
    n = topology.num_nodes
    if not x.shape.is_fully_defined() or x.shape.rank != 1:
        raise ValueError(
            "`x` must be a 1-D tensor of static shape. "
            f"Received: shape={x.shape}"
        )
    table = topology.weights_table()

    def round_fn(t):
        peers = (
            topology.neighbors(node, t),
            topology.out_neighbors(node, t),
        )
        return exchange_round(
            x,
            table[t, node],
            node,
            peers,
            num_nodes=n,
            slot=slot,
            timeout=timeout,
        )

    if topology.period == 1:
        return round_fn(0)
    index = tf.cast(tf.math.floormod(step, topology.period), tf.int32)
    return tf.switch_case(
        index, [lambda t=t: round_fn(t) for t in range(topology.period)]
    )
