"""GossipStrategy: decentralized parallel SGD (D-PSGD).

Vocabulary. A *node* is one model copy: a local device (replica) on one host.
The *topology* is a doubly stochastic mixing matrix `W` (or a sequence `W_t`
for time-varying graphs) with `W[i, j]` the weight node `i` gives to node
`j`'s value. *Mixing* is one gossip round `x_i <- sum_j W[i, j] x_j`. The
*consensus distance* is `(1/n) sum_i ||x_i - x_bar||^2` over all trainable
parameters, where `x_bar` is the average of the `n` copies.

Every replica keeps its own copy of every variable (parameters, optimizer
slots, batch-normalization statistics). Gradients stay local: the global
gradient all-reduce of synchronous training is replaced by mixing with the
neighbours of the topology. Two update rules:

- `"dpsgd"` (Lian et al. 2017, Algorithm 1):
  `x_i <- sum_j W_ij x_j - lr * g_i(x_i)`, the gradient computed at the copy
  before mixing.
- `"atc"` (adapt-then-combine):
  `x_i <- sum_j W_ij (x_j - lr * g_j(x_j))`, every copy first takes its own
  optimizer step, then the results are mixed.

With a non-SGD optimizer "`- lr * g`" stands for the optimizer's update, with
the optimizer's slots (momentum, Adam moments) local to each replica.

Reading a variable outside `strategy.run` (`get_weights`, `model.save`,
`save_weights`, `tf.train.Checkpoint`, `model.export`) returns the average of
the copies; assigning one (`set_weights`, `load_weights`, checkpoint restore)
sets every copy.

References:
    Lian, Zhang, Zhang, Hsieh, Zhang, Liu. "Can Decentralized Algorithms
    Outperform Centralized Algorithms? A Case Study for Decentralized Parallel
    Stochastic Gradient Descent." NeurIPS 2017.
"""

import collections
import functools
import itertools
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_decentral import topology as topology_lib
from tf_decentral._tf_private import context
from tf_decentral._tf_private import distribute_lib
from tf_decentral._tf_private import distribute_utils
from tf_decentral._tf_private import mirrored_strategy
from tf_decentral._tf_private import numpy_dataset
from tf_decentral._tf_private import record
from tf_decentral._tf_private import values_lib
from tf_decentral._tf_private import variable_scope
from tf_decentral.ops import packing
from tf_decentral.strategies import _collective
from tf_decentral.strategies import _keras_hooks

UPDATE_RULES = ("dpsgd", "atc")
MIX_IMPLEMENTATIONS = ("xla", "packed")

_ONLY_FIRST_REPLICA = variable_scope.VariableAggregation.ONLY_FIRST_REPLICA


class GossipVariable(values_lib.MirroredVariable):
    """A mirrored variable whose per-replica copies may differ.

    Inside `strategy.run` each replica reads and writes its own copy. A
    cross-replica read, and any read outside a strategy scope, returns the
    average of the copies for floating-point variables (integer counters such
    as the optimizer's `iterations` are identical on every replica and return
    the first copy). Cross-replica assignment sets every copy.
    """

    def _is_averaged(self):
        return (
            self.dtype.is_floating and self.aggregation != _ONLY_FIRST_REPLICA
        )

    def _get_cross_replica(self):
        if not self._is_averaged():
            return super()._get_cross_replica()
        extended = self._distribute_strategy.extended
        extended.hook_counts["average_reads"] += 1
        # No explicit device: a SavedModel traced through this read must not
        # pin ops to this cluster's devices (`/job:worker/...`).
        total = tf.math.add_n([v.read_value() for v in self._values])
        return total / tf.cast(len(self._values), self.dtype)

    def _get(self):
        # Outside any strategy scope TF's default replica context reports
        # replica 0, so the stock `_get` would return the first copy to
        # `np.array(var)`, checkpoints and Keras' .weights.h5 writer. Such a
        # read is a cross-replica read of the model: return the average.
        if (
            not distribute_lib.has_strategy()
            and distribute_lib.get_update_replica_id() is None
        ):
            return self._get_cross_replica()
        return super()._get()


_CLASS_MAPPING = dict(distribute_utils.VARIABLE_CLASS_MAPPING)
_CLASS_MAPPING[variable_scope.VariableSynchronization.ON_WRITE] = GossipVariable
_CLASS_MAPPING[variable_scope.VariableSynchronization.AUTO] = GossipVariable


def scale_gradients(grads_and_vars, scale):
    """Returns `(gradient * scale, variable)` pairs; None and sparse kept."""
    out = []
    for grad, var in grads_and_vars:
        if grad is None:
            out.append((grad, var))
        elif isinstance(grad, tf.IndexedSlices):
            values = grad.values * tf.cast(scale, grad.values.dtype)
            out.append(
                (tf.IndexedSlices(values, grad.indices, grad.dense_shape), var)
            )
        else:
            out.append((grad * tf.cast(scale, grad.dtype), var))
    return out


class GossipOptimizerHooks(_keras_hooks.OptimizerHooks):
    """The update rule shared by single-host and multi-worker gossip.

    Subclasses provide `_update_rule` and `mix(variables, step)`.
    """

    def keras_apply_gradients(
        self, optimizer, grads_and_vars, learning_rate, apply_fn
    ):
        """Mixes updated variables before (dpsgd) or after (atc) the step."""
        variables = [
            v
            for g, v in grads_and_vars
            if g is not None and isinstance(v, GossipVariable)
        ]
        step = optimizer.iterations
        if self._update_rule == "dpsgd":
            self.mix(variables, step=step)
        result = apply_fn()
        if self._update_rule == "atc":
            self.mix(variables, step=step)
        return result


class GossipVariableCreator:
    """Mixin for `MirroredExtended` subclasses: creates `GossipVariable`s."""

    def _create_variable(self, next_creator, **kwargs):
        """Creates a `GossipVariable` with one copy per device.

        A copy of `MirroredExtended._create_variable` (TF 2.21) that passes
        our class mapping to `create_mirrored_variable`.
        """
        self.hook_counts["create_variable"] += 1
        colocate_with = kwargs.pop("colocate_with", None)
        if colocate_with is None:
            devices = self._devices
        elif isinstance(colocate_with, numpy_dataset.SingleDevice):
            with tf.device(colocate_with.device):
                return next_creator(**kwargs)
        else:
            devices = colocate_with._devices

        def _real_mirrored_creator(**kwargs):
            value_list = []
            for i, d in enumerate(devices):
                with tf.device(d):
                    kwargs["initial_value"] = (
                        self._get_variable_creator_initial_value(
                            replica_id=i,
                            device=d,
                            primary_var=value_list[0] if value_list else None,
                            **kwargs,
                        )
                    )
                    if i > 0:
                        var0name = value_list[0].name.split(":")[0]
                        kwargs["name"] = f"{var0name}/replica_{i}/"
                    with context.device_policy(context.DEVICE_PLACEMENT_SILENT):
                        with record.stop_recording():
                            v = next_creator(**kwargs)
                    value_list.append(v)
            return value_list

        return distribute_utils.create_mirrored_variable(
            self._container_strategy(),
            _real_mirrored_creator,
            _CLASS_MAPPING,
            distribute_utils.VARIABLE_POLICY_MAPPING,
            **kwargs,
        )


class _GossipExtended(
    GossipVariableCreator,
    mirrored_strategy.MirroredExtended,
    GossipOptimizerHooks,
):
    """Implementation of `GossipStrategy` on the devices of one host."""

    def __init__(
        self, container_strategy, devices, topology, update, mix_implementation
    ):
        super().__init__(container_strategy, devices=devices)
        self._topology = topology
        self._update_rule = update
        self._mix_implementation = mix_implementation
        table = topology.weights_table()
        self._weights_table = table
        # support[i]: the nodes node i ever mixes in (itself included).
        self._support = [
            tuple(int(j) for j in np.flatnonzero(table[:, i, :].max(axis=0)))
            for i in range(topology.num_nodes)
        ]
        self.hook_counts = collections.Counter()

    # Keras and tf.distribute internals -----------------------------------

    def _use_merge_call(self):
        # The optimizer hooks run in `merge_call`; MirroredExtended skips it
        # only under XLA on all-GPU devices, which Keras never requests under
        # a strategy. Keep it unconditional so the hooks always see every
        # variable of a step in cross-replica context.
        return True

    # Optimizer hooks (see _keras_hooks) ---------------------------------

    def keras_reduce_gradients(self, optimizer, grads_and_vars):
        """Keeps each replica's gradient local (no all-reduce).

        Keras divided the loss by `num_replicas_in_sync` so that a SUM
        all-reduce gives the global mean; multiplying by the number of
        replicas gives back the replica's own mean gradient.
        """
        self.hook_counts["local_gradients"] += 1
        return scale_gradients(grads_and_vars, self._num_replicas_in_sync)

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
        by_dtype = collections.defaultdict(list)
        for v in variables:
            by_dtype[v.dtype.base_dtype].append(v)
        row_index = None
        if self._topology.period > 1:
            step = tf.convert_to_tensor(step)
            row_index = tf.cast(
                tf.cast(step, tf.int64) % self._topology.period, tf.int32
            )
        mix_group = (
            self._mix_group_xla
            if self._mix_implementation == "xla"
            else self._mix_group_packed
        )
        for dtype, group in by_dtype.items():
            mix_group(dtype, group, row_index)

    def _mix_group_xla(self, dtype, group, row_index):
        table = self._weights_table
        reads = []
        for r, device in enumerate(self._devices):
            with tf.device(device):
                reads.append([v.values[r].read_value() for v in group])

        def mix_row(t, i):
            cols = [int(j) for j in np.flatnonzero(table[t, i])]
            weights = tf.constant(table[t, i, cols], dtype)
            return _xla_weighted_sum(weights, [reads[j] for j in cols])

        for i, device in enumerate(self._devices):
            with tf.device(device):
                if row_index is None:
                    mixed = mix_row(0, i)
                else:
                    mixed = tf.switch_case(
                        row_index,
                        [
                            functools.partial(mix_row, t, i)
                            for t in range(self._topology.period)
                        ],
                    )
                self.hook_counts["xla_mix"] += 1
                for v, value in zip(group, mixed):
                    v.values[i].assign(value, read_value=False)

    def _mix_group_packed(self, dtype, group, row_index):
        shapes = [v.shape for v in group]
        buffers = []
        for r, device in enumerate(self._devices):
            with tf.device(device):
                buffers.append(
                    packing.pack([v.values[r].read_value() for v in group])
                )
        mixed = []
        for i, device in enumerate(self._devices):
            support = self._support[i]
            with tf.device(device):
                if row_index is None:
                    w = tf.constant(self._weights_table[0, i, support], dtype)
                else:
                    rows = tf.constant(
                        self._weights_table[:, i, support], dtype
                    )
                    w = tf.gather(rows, row_index)
                stacked = tf.stack([buffers[j] for j in support])
                mixed.append(tf.tensordot(w, stacked, axes=1))
        for i, device in enumerate(self._devices):
            with tf.device(device):
                parts = packing.unpack(mixed[i], shapes)
                for v, part in zip(group, parts):
                    v.values[i].assign(part, read_value=False)


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


def _default_devices():
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) >= 2:
        return [d.name for d in gpus]
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _resolve_devices(devices):
    if devices is None:
        resolved = _default_devices()
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


DEFAULT_TIMEOUT_SECONDS = 120.0
"""Collective timeout of multi-worker gossip when none is given."""


def _multi_worker_resolver_from_env():
    """Returns a TF_CONFIG cluster resolver if it names several workers."""
    if not os.environ.get("TF_CONFIG"):
        return None
    from tf_decentral.cluster import tf_config

    config = tf_config.from_env()
    if config is None or config.num_workers + int(config.has_chief) < 2:
        return None
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _by_dtype(variables):
    groups = collections.defaultdict(list)
    for v in variables:
        groups[v.dtype.base_dtype].append(v)
    return groups


class GossipStrategy(tf.distribute.Strategy):
    """Decentralized parallel SGD (D-PSGD) across the devices of one host.

    Every device keeps its own copy of the model. Each step, every replica
    computes a gradient on its own shard of the global batch with its own
    copy, and mixes its copy with its neighbours' through the topology's
    doubly stochastic matrix instead of all-reducing gradients. Drop it into
    unmodified Keras code:

    ```python
    strategy = tfd.GossipStrategy("ring")
    with strategy.scope():
        model = make_model()
        model.compile(optimizer="adam", loss=..., metrics=[...])
    model.fit(dataset, epochs=...)
    model.save("model.keras")  # the average of the copies
    ```

    `evaluate` and `predict` run every replica's own copy on its shard of
    the data, so `evaluate` reports the average over the local models; call
    `average_weights(model)` first to evaluate the averaged model.

    Args:
        topology: A topology name (see `tf_decentral.topology.NAMES`), a
            `tf_decentral.topology.Topology`, or a doubly stochastic matrix of
            shape `(n, n)` (or `(period, n, n)`), with one node per device.
        devices: Device names, one replica each. `None` means every GPU if
            there are at least two, else every logical CPU.
        update: `"dpsgd"` (mix, then apply the local gradient computed before
            mixing; Lian et al. 2017) or `"atc"` (apply the local update, then
            mix).
        mix_implementation: How the devices of one host mix. `"xla"` (the
            default on one host): one XLA-compiled weighted sum per device
            over the current round's neighbours. `"packed"`: no XLA; all
            variables packed into one buffer per replica, one `tensordot`
            per device. Both compute the same round (up to float rounding).
            Not used across the workers of a cluster, which exchange packed
            buffers over the network.

    Raises:
        ValueError: For fewer than 2 devices, an unknown `update`,
            `mix_implementation` or topology name, or a topology whose size
            is not the number of devices.

    __Known issues__: like `tf.distribute.MirroredStrategy`, it does not
    support Keras' `gradient_accumulation_steps` or `use_ema` with
    `ema_overwrite_frequency`. `BatchNormalization(synchronized=True)` still
    all-reduces its batch statistics across replicas.

    References:
        Lian et al. "Can Decentralized Algorithms Outperform Centralized
        Algorithms?" NeurIPS 2017.
    """

    # MirroredExtended.__init__ numbers its collective groups (used by the
    # metric reductions and any replica all-reduce) from this base. Stock
    # strategies all start at 0, so two of them with different device sets in
    # one process clash ("joining a group with size 2, but that group has
    # size 4"). Give every GossipStrategy its own range.
    _collective_key_base = 0
    _instances = itertools.count(1)

    def __init__(
        self,
        topology="ring",
        devices=None,
        *,
        update="dpsgd",
        mix_implementation=None,
        cluster_resolver=None,
        communication_options=None,
    ):
        if update not in UPDATE_RULES:
            raise ValueError(
                f"`update` must be one of {UPDATE_RULES}. "
                f"Received: update={update!r}"
            )
        if (
            mix_implementation is not None
            and mix_implementation not in MIX_IMPLEMENTATIONS
        ):
            raise ValueError(
                "`mix_implementation` must be one of "
                f"{MIX_IMPLEMENTATIONS} or None. "
                f"Received: mix_implementation={mix_implementation!r}"
            )
        if cluster_resolver is None:
            cluster_resolver = _multi_worker_resolver_from_env()
        _keras_hooks.install()
        self._collective_key_base = _collective.key_base("gossip")
        if cluster_resolver is not None:
            if mix_implementation is not None:
                raise ValueError(
                    "`mix_implementation` chooses how the devices of one "
                    "host mix; the workers of a cluster exchange packed "
                    "buffers over the network. Received: "
                    f"mix_implementation={mix_implementation!r} and a "
                    "cluster of workers."
                )
            if devices is not None:
                raise ValueError(
                    "`devices` cannot be set with a cluster: each worker "
                    "uses its own GPUs, or its CPU. Received: "
                    f"devices={devices!r} and a cluster of workers."
                )
            # Imported here: it subclasses this module's classes.
            from tf_decentral.strategies.gossip import (
                multi_worker as _multi_worker_gossip,
            )

            options = _collective.communication_options(
                communication_options, DEFAULT_TIMEOUT_SECONDS
            )
            extended = _multi_worker_gossip.MultiWorkerGossipExtended(
                self, cluster_resolver, options, topology, update
            )
        else:
            if communication_options is not None:
                raise ValueError(
                    "`communication_options` applies to gossip across the "
                    "workers of a cluster; on one host the replicas mix by "
                    "device copies. Received: communication_options="
                    f"{communication_options!r} and no cluster."
                )
            devices = _resolve_devices(devices)
            topo = topology_lib.resolve(topology, len(devices))
            extended = _GossipExtended(
                self, devices, topo, update, mix_implementation or "xla"
            )
        super().__init__(extended)

    @property
    def is_multi_worker(self) -> bool:
        """Whether the gossip nodes are the workers of a cluster."""
        return not isinstance(self.extended, _GossipExtended)

    @property
    def topology(self) -> topology_lib.Topology:
        """The `Topology` whose nodes are this strategy's replicas."""
        return self.extended._topology

    @property
    def update(self) -> str:
        """The update rule, `"dpsgd"` or `"atc"`."""
        return self.extended._update_rule

    def consensus_distance(self, model_or_variables) -> float:
        """Returns `(1/n) sum_i ||x_i - x_bar||^2` over trainable parameters.

        `x_i` is replica `i`'s copy of all trainable variables and `x_bar`
        their average; 0 means every copy is identical.

        Args:
            model_or_variables: A Keras model (its trainable weights are
                used) or a list of variables created under this strategy.
        """
        variables = self._gossip_variables(model_or_variables, trainable=True)
        if not variables:
            return 0.0
        if self.is_multi_worker:
            return self._multi_worker_consensus_distance(variables)
        n = self.num_replicas_in_sync
        total = 0.0
        for group in _by_dtype(variables).values():
            primary = self.extended._devices[0]
            copies = []
            for r, device in enumerate(self.extended._devices):
                with tf.device(device):
                    buf = packing.pack(
                        [v.values[r].read_value() for v in group]
                    )
                copies.append(tf.cast(buf, tf.float64))
            with tf.device(primary):
                stacked = tf.stack(copies)
                mean = tf.reduce_mean(stacked, axis=0, keepdims=True)
                total += float(tf.reduce_sum(tf.square(stacked - mean)))
        return total / n

    def _multi_worker_consensus_distance(self, variables):
        extended = self.extended
        total = 0.0
        for group in _by_dtype(variables).values():
            with tf.device(extended._devices[0]):
                local = tf.cast(
                    packing.pack([v.values[0].read_value() for v in group]),
                    tf.float64,
                )
                mean = extended.global_mean(local)
                own = tf.reduce_sum(tf.square(local - mean))
                total += float(extended.global_mean(own))
        return total

    def average_weights(self, model_or_variables) -> None:
        """Sets every copy of every model variable to the exact average.

        Averages trainable and non-trainable floating-point variables (e.g.
        batch-normalization statistics), not the optimizer's slots. Call it
        outside `strategy.run`, e.g. before evaluating the consensus model.

        Args:
            model_or_variables: A Keras model or a list of variables created
                under this strategy.
        """
        variables = self._gossip_variables(model_or_variables, trainable=False)
        variables = [v for v in variables if v._is_averaged()]
        if not self.is_multi_worker:
            for v in variables:
                mean = v._get_cross_replica()
                for component in v.values:
                    component.assign(mean, read_value=False)
            return
        extended = self.extended
        for group in _by_dtype(variables).values():
            with tf.device(extended._devices[0]):
                local = packing.pack([v.values[0].read_value() for v in group])
                mean = extended.global_mean(local)
            parts = packing.unpack(mean, [v.shape for v in group])
            for v, part in zip(group, parts):
                for component in v.values:
                    component.assign(part, read_value=False)

    def save(self, model, filepath, **kwargs) -> bool:
        """Saves the consensus (averaged) model; returns whether it wrote.

        On one host this is `model.save(filepath, **kwargs)` (reads are
        averages already). Across workers every worker must call it: the
        model is averaged over all workers (a collective), the chief (or
        worker 0) writes `filepath`, and every worker then gets its own
        weights back, so training can continue undisturbed.

        Args:
            model: A Keras model built under this strategy.
            filepath: Where `model.save` writes (`.keras` or `.h5`).
            **kwargs: Passed to `model.save`.
        """
        return self._consensus_write(
            model, lambda: model.save(filepath, **kwargs)
        )

    def export(self, model, filepath, **kwargs) -> bool:
        """`model.export` of the consensus model; see `save`."""
        return self._consensus_write(
            model, lambda: model.export(filepath, **kwargs)
        )

    def _consensus_write(self, model, write):
        if not self.is_multi_worker:
            write()
            return True
        own = [w.copy() for w in model.get_weights()]
        self.average_weights(model)
        try:
            if self.extended.should_checkpoint:
                write()
                return True
            return False
        finally:
            model.set_weights(own)

    def _gossip_variables(self, model_or_variables, trainable):
        if hasattr(model_or_variables, "trainable_weights"):
            candidates = (
                model_or_variables.trainable_weights
                if trainable
                else model_or_variables.weights
            )
        else:
            candidates = list(model_or_variables)
        out = []
        for v in candidates:
            v = getattr(v, "value", v) if not isinstance(v, tf.Variable) else v
            if not isinstance(v, GossipVariable):
                raise ValueError(
                    "Every variable must be created under this "
                    "GossipStrategy's scope. Received: a "
                    f"{type(v).__name__} named {getattr(v, 'name', '?')!r}. "
                    "Build and compile the model inside `strategy.scope()`."
                )
            if v.distribute_strategy is not self:
                raise ValueError(
                    f"Variable {v.name!r} belongs to another strategy. "
                    "Received: a variable of a different GossipStrategy."
                )
            out.append(v)
        return out
