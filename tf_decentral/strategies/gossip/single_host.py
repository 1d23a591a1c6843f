"""Implementation of `GossipStrategy` on the devices of one host.

Every local device (replica) is one gossip node with its own copy of every
variable. One gossip round `x_i <- sum_j W_t[i, j] x_j` is a weighted sum of
device copies, computed per dtype group by `mix_group`: one XLA-compiled sum
per device (`"xla"`, the default) or one `tensordot` per device over packed
buffers (`"packed"`).
"""

import collections
import functools
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_decentral import _tf_private
from tf_decentral.ops import packing
from tf_decentral.strategies.gossip.update import GossipOptimizerHooks
from tf_decentral.strategies.gossip.update import scale_gradients
from tf_decentral.strategies.gossip.variables import GossipVariableCreator
from tf_decentral.strategies.gossip.variables import gossip_variables

MIX_IMPLEMENTATIONS = ("xla", "packed")


class SingleHostGossipExtended(
    GossipVariableCreator,
    _tf_private.MirroredExtended,
    GossipOptimizerHooks,
):
    """Implementation of `GossipStrategy` on the devices of one host.

    Attributes:
        topology: The `Topology`; node `i` is `worker_devices[i]`.
        update_rule: `"dpsgd"` or `"atc"`.
        mix_implementation: `"xla"` or `"packed"`.
        weights_table: `topology.weights_table()`, shape `(period, n, n)`.
        support: `support[i]`, the nodes node `i` ever mixes in (itself
            included), sorted.
        hook_counts: How often each hook fired (tests read it).
    """

    def __init__(
        self, container_strategy, devices, topology, update, mix_implementation
    ):
        super().__init__(container_strategy, devices=devices)
        self.topology = topology
        self.update_rule = update
        self.mix_implementation = mix_implementation
        table = topology.weights_table()
        self.weights_table = table
        self.support = [
            tuple(int(j) for j in np.flatnonzero(table[:, i, :].max(axis=0)))
            for i in range(topology.num_nodes)
        ]
        self.hook_counts = collections.Counter()

    # tf.distribute and Keras hooks -------------------------------------

    def use_merge_call(self):
        # The optimizer hooks run in `merge_call`; MirroredExtended skips it
        # only under XLA on all-GPU devices, which Keras never requests under
        # a strategy. Keep it unconditional so the hooks always see every
        # variable of a step in cross-replica context.
        return True

    def keras_reduce_gradients(self, optimizer, grads_and_vars):
        """Keeps each replica's gradient local (no all-reduce).

        Keras divided the loss by `num_replicas_in_sync` so that a SUM
        all-reduce gives the global mean; multiplying by the number of
        replicas gives back the replica's own mean gradient.
        """
        self.hook_counts["local_gradients"] += 1
        return scale_gradients(grads_and_vars, len(self.worker_devices))

    # Mixing --------------------------------------------------------------

    def mix(self, variables, step=0):
        """One gossip round `x_i <- sum_j W_t[i, j] x_j` over `variables`.

        Must run in cross-replica context. With `mix_implementation="xla"`
        every device runs one XLA-compiled function that fuses the weighted
        sums of all variables of one dtype (reads `k x P`, writes `P`
        elements; no concat, stack or split copies) and, for a time-varying
        topology, a `tf.switch_case` on `t mod period` picks the branch that
        reads only that round's nonzero neighbours. With `"packed"` all
        variables of one dtype are packed into one buffer per replica and
        mixed with one `tensordot` per device over every neighbour any round
        uses (no XLA; the weights of a round select the peers).

        Args:
            variables: `GossipVariable`s of this strategy.
            step: Round number `t` (int or scalar integer tensor), selecting
                `W_t` of a time-varying topology.
        """
        if not variables:
            return
        self.hook_counts["mix"] += 1
        row_index = self.row_index(step)
        for dtype, group in packing.group_by_dtype(variables).items():
            self.mix_group(dtype, group, row_index)

    def row_index(self, step):
        """Returns `t mod period` as an int32 tensor, or None if period 1."""
        period = self.topology.period
        if period == 1:
            return None
        step = tf.cast(tf.convert_to_tensor(step), tf.int64)
        return tf.cast(step % period, tf.int32)

    def mix_group(self, dtype, group, row_index):
        """Mixes the variables `group` (all of `dtype`) in place.

        The one per-group step of `mix`; subclasses may override it (the
        benchmarks in `bench/single_host/mix_variants.py` do).

        Args:
            dtype: The base dtype of every variable of `group`.
            group: `GossipVariable`s of this strategy.
            row_index: `row_index(step)`: None for a static topology, else
                the round `t mod period` as a scalar int32 tensor.
        """
        if self.mix_implementation == "xla":
            self.mix_group_xla(dtype, group, row_index)
        else:
            self.mix_group_packed(dtype, group, row_index)

    def read_copies(self, group):
        """Returns `reads[r][k]`: replica `r`'s value of `group[k]`."""
        reads = []
        for r, device in enumerate(self.worker_devices):
            with tf.device(device):
                reads.append([v.values[r].read_value() for v in group])
        return reads

    def mix_group_xla(self, dtype, group, row_index):
        """`mix_group` by one XLA-compiled weighted sum per device."""
        table = self.weights_table
        reads = self.read_copies(group)

        def mix_row(t, i):
            cols = [int(j) for j in np.flatnonzero(table[t, i])]
            weights = tf.constant(table[t, i, cols], dtype)
            return _xla_weighted_sum(weights, [reads[j] for j in cols])

        for i, device in enumerate(self.worker_devices):
            with tf.device(device):
                if row_index is None:
                    mixed = mix_row(0, i)
                else:
                    mixed = tf.switch_case(
                        row_index,
                        [
                            functools.partial(mix_row, t, i)
                            for t in range(self.topology.period)
                        ],
                    )
                self.hook_counts["xla_mix"] += 1
                for v, value in zip(group, mixed):
                    v.values[i].assign(value, read_value=False)

    def mix_group_packed(self, dtype, group, row_index):
        """`mix_group` by one `tensordot` per device over packed buffers."""
        devices = self.worker_devices
        shapes = [v.shape for v in group]
        buffers = []
        for r, device in enumerate(devices):
            with tf.device(device):
                buffers.append(
                    packing.pack([v.values[r].read_value() for v in group])
                )
        mixed = []
        for i, device in enumerate(devices):
            support = self.support[i]
            with tf.device(device):
                if row_index is None:
                    w = tf.constant(self.weights_table[0, i, support], dtype)
                else:
                    rows = tf.constant(self.weights_table[:, i, support], dtype)
                    w = tf.gather(rows, row_index)
                stacked = tf.stack([buffers[j] for j in support])
                mixed.append(tf.tensordot(w, stacked, axes=1))
        for i, device in enumerate(devices):
            with tf.device(device):
                parts = packing.unpack(mixed[i], shapes)
                for v, part in zip(group, parts):
                    v.values[i].assign(part, read_value=False)

    # Consensus -----------------------------------------------------------

    def consensus_distance(self, model_or_variables) -> float:
        """`(1/n) sum_i ||x_i - x_bar||^2` over the trainable variables."""
        variables = gossip_variables(
            self.container_strategy(), model_or_variables, trainable=True
        )
        devices = self.worker_devices
        total = 0.0
        for group in packing.group_by_dtype(variables).values():
            copies = []
            for r, device in enumerate(devices):
                with tf.device(device):
                    buf = packing.pack(
                        [v.values[r].read_value() for v in group]
                    )
                copies.append(tf.cast(buf, tf.float64))
            with tf.device(devices[0]):
                stacked = tf.stack(copies)
                mean = tf.reduce_mean(stacked, axis=0, keepdims=True)
                total += float(tf.reduce_sum(tf.square(stacked - mean)))
        return total / len(devices)

    def average_weights(self, model_or_variables) -> None:
        """Sets every copy of every averaged variable to the average."""
        variables = gossip_variables(
            self.container_strategy(), model_or_variables, trainable=False
        )
        for v in variables:
            if not v.is_averaged:
                continue
            mean = v.read_cross_replica()
            for component in v.values:
                component.assign(mean, read_value=False)

    def consensus_write(self, model, write) -> bool:
        """Runs `write()`: on one host every read is the average already."""
        del model
        write()
        return True


@tf.function(jit_compile=True, autograph=False)
def _xla_weighted_sum(weights, groups):
    """`[sum_j weights[j] * groups[j][v] for v]`, one XLA cluster.

    `groups[j]` holds the values of every variable of node `j` (all of one
    dtype). XLA fuses the per-variable sums into one kernel launch per device.
    """
    out = []
    for v in range(len(groups[0])):
        acc = weights[0] * groups[0][v]
        for j in range(1, len(groups)):
            acc = acc + weights[j] * groups[j][v]
        out.append(acc)
    return out


def default_devices():
    """Every GPU if there are at least two, else every logical CPU."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) >= 2:
        return [d.name for d in gpus]
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def resolve_devices(devices):
    """Returns the checked list of device names (`default_devices` if None).

    Raises:
        TypeError: If `devices` is not a sequence of names.
        ValueError: For fewer than 2 devices, or duplicates.

    Example:
        >>> resolve_devices(("/cpu:0", "/cpu:1"))
        ['/cpu:0', '/cpu:1']
        >>> resolve_devices(["/cpu:0", "/cpu:0"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `devices` must be distinct. Received: ...
    """
    if devices is None:
        resolved = default_devices()
        if len(resolved) < 2:
            raise ValueError(
                "GossipStrategy needs at least 2 devices, one per model copy. "
                f"Received: devices=None, and this host has only {resolved}. "
                "Pass `devices=[...]`, or split the CPU into logical devices "
                "with `tf_decentral.testing.logical_cpus(4)` at the start of "
                "the program."
            )
        return resolved
    if isinstance(devices, str) or not isinstance(devices, Sequence):
        raise TypeError(
            "`devices` must be a list of device names or None. "
            f"Received: devices={devices!r}"
        )
    devices = list(devices)
    if len(devices) < 2:
        raise ValueError(
            "GossipStrategy needs at least 2 devices, one per model copy. "
            f"Received: devices={devices}"
        )
    if len(set(devices)) != len(devices):
        raise ValueError(
            f"`devices` must be distinct. Received: devices={devices}"
        )
    return devices
