"""Implementation of `GossipStrategy` across the workers of a TF cluster.

The gossip nodes are the workers (chief first, then workers, TF's order).
The devices of one worker hold identical copies: their gradients are
all-reduced among themselves (hierarchically, before gossip), so every local
copy takes the same step. Workers mix their packed parameters with their
neighbours over two-member collective groups
(`tf_decentral.ops.neighbor_exchange`).

With the `"dpsgd"` rule the exchange of `x_t` overlaps the step's forward
and backward pass: it is built in the optimizer hook, but its inputs are
reads of the variables that no write of the step precedes, the broadcast ops
are never chained by automatic control dependencies, and a time-varying
topology's `Case` is stateless for them (collectives are "asynchronous
stateful" ops), so nothing orders the exchange after the gradient; only the
write of the mix waits for both. `tests/strategies/gossip/
gossip_multiprocess_test.py` checks the step's graph for it. Measured at
20 ms one way (2 workers, ring, 0.4 MB): 50 ms of compute per step gives
60-64 ms steps, no compute 63 ms, i.e. the exchange costs one request-reply
round trip plus the transfer whatever the compute, and hides up to that much
compute. `"atc"` mixes the updated variables, which exist only after the
gradient: it cannot overlap.
"""

import collections
import contextlib
import os

import tensorflow as tf

from tf_decentral import _tf_private
from tf_decentral import cluster
from tf_decentral import topology as topology_lib
from tf_decentral.ops import neighbor_exchange
from tf_decentral.ops import packing
from tf_decentral.strategies import _collective
from tf_decentral.strategies.gossip.update import GossipOptimizerHooks
from tf_decentral.strategies.gossip.update import scale_gradients
from tf_decentral.strategies.gossip.variables import GossipVariableCreator
from tf_decentral.strategies.gossip.variables import gossip_variables

_SUM = tf.distribute.ReduceOp.SUM
_MEAN = tf.distribute.ReduceOp.MEAN

DEFAULT_TIMEOUT_SECONDS = 120.0
"""Collective timeout of multi-worker gossip when none is given."""


def resolver_from_env():
    """Returns a TF_CONFIG cluster resolver if it names several workers."""
    if not os.environ.get("TF_CONFIG"):
        return None
    config = cluster.from_env()
    if config is None or config.num_workers + int(config.has_chief) < 2:
        return None
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


class MultiWorkerGossipExtended(
    _collective.WatchedKerasStep,
    GossipVariableCreator,
    _collective.Keras3ExtendedFixes,
    _tf_private.GossipCollectiveExtended,
    GossipOptimizerHooks,
):
    """Gossip between workers; all-reduce among one worker's devices.

    Attributes:
        topology: The `Topology` whose nodes are the workers.
        update_rule: `"dpsgd"` or `"atc"`.
        node: This worker's gossip node (`id_in_cluster`).
        timeout: Collective timeout in seconds (None: wait forever); in
            Keras' step, per step (`watchdog`), else per collective op.
        watchdog: The `_collective.StepWatchdog` of Keras' step (every
            call of it runs under it, `_collective.WatchedKerasStep`).
        hook_counts: How often each hook fired (tests read it).
    """

    def __init__(self, container, cluster_resolver, options, topology, update):
        self.hook_counts = collections.Counter()
        super().__init__(
            container,
            cluster_resolver=cluster_resolver,
            communication_options=options,
        )
        self.topology = topology_lib.resolve(topology, self.num_workers)
        self.update_rule = update
        self.node = self.id_in_cluster
        self.timeout = options.timeout_seconds
        self.init_watched_step(
            self.timeout,
            f"the training step of worker {self.task_type}:{self.task_id}",
        )
        self._global_reductions = False

    def use_merge_call(self):
        return True

    # Optimizer hooks ----------------------------------------------------

    def keras_reduce_gradients(self, optimizer, grads_and_vars):
        """All-reduces gradients among this worker's devices only.

        Keras scaled the loss by `1 / (workers * local devices)`; the local
        sum times the number of workers is this worker's mean gradient.
        """
        self.hook_counts["local_gradients"] += 1
        scale = self.num_workers
        if len(self.worker_devices) > 1:
            # GPU workers (not run here: no GPU was available to test it).
            grads_and_vars = self._local_all_reduce(grads_and_vars)
        return scale_gradients(grads_and_vars, scale)

    def _local_all_reduce(self, grads_and_vars):
        ctx = tf.distribute.get_replica_context()
        indices = [
            i for i, (g, _) in enumerate(grads_and_vars) if g is not None
        ]
        grads = [tf.convert_to_tensor(grads_and_vars[i][0]) for i in indices]

        def merge_fn(strategy, *per_replica):
            del strategy
            ops = self._local_ops()
            return ops.batch_reduce(_SUM, [(g, g) for g in per_replica])

        reduced = ctx.merge_call(merge_fn, args=tuple(grads))
        out = list(grads_and_vars)
        for i, g in zip(indices, reduced):
            out[i] = (g, grads_and_vars[i][1])
        return out

    def _local_ops(self):
        if not hasattr(self, "_local_cross_device_ops"):
            self._local_cross_device_ops = (
                tf.distribute.NcclAllReduce()
                if all("GPU" in d.upper() for d in self.worker_devices)
                else tf.distribute.ReductionToOneDevice()
            )
        return self._local_cross_device_ops

    # Mixing -------------------------------------------------------------

    def mix(self, variables, step=0):
        """One gossip round with this worker's neighbours, in place.

        Packs the local copy of `variables` (one buffer per dtype), exchanges
        it with the topology's neighbours of round `step`, and writes the mix
        into every local copy. Every worker must call it at the same point.
        """
        if not variables:
            return
        self.hook_counts["mix"] += 1
        # In Keras' step the watchdog times the step out (one thread); a
        # per-op timeout would hold a thread per exchange for `timeout` s.
        timeout = (
            _collective.NO_OP_TIMEOUT if self.in_keras_step else self.timeout
        )
        groups = packing.group_by_dtype(variables).values()
        for slot, group in enumerate(groups):
            with tf.device(self.worker_devices[0]):
                mixed = neighbor_exchange.gossip_round(
                    self._pack_local(group),
                    self.topology,
                    self.node,
                    step,
                    slot=slot,
                    timeout=timeout,
                )
            self._assign_every_copy(group, mixed)

    def _pack_local(self, group):
        """This worker's value of `group` as one buffer (copies are equal)."""
        return packing.pack([v.values[0].read_value() for v in group])

    def _assign_every_copy(self, group, buffer):
        """Writes the packed `buffer` into every local copy of `group`."""
        shapes = [v.shape for v in group]
        for r, device in enumerate(self.worker_devices):
            with tf.device(device):
                parts = packing.unpack(buffer, shapes)
                for v, part in zip(group, parts):
                    v.values[r].assign(part, read_value=False)

    # Errors ---------------------------------------------------------------

    def explain_communication_error(self, error):
        neighbours = set()
        for t in range(self.topology.period):
            neighbours.update(self.topology.neighbors(self.node, t))
            neighbours.update(self.topology.out_neighbors(self.node, t))
        neighbours.discard(self.node)
        spec = self.cluster_spec.as_dict()
        tasks = cluster.training_tasks(spec)  # `(job, index)` by gossip node
        return _collective.explain_lost_worker(
            error,
            cluster=spec,
            own=(self.task_type, self.task_id),
            what=(
                f"Gossip training on {self.task_type}:{self.task_id} "
                f"(gossip node {self.node} of {self.topology.num_nodes})"
            ),
            timeout=self.timeout,
            peers=[tasks[node] for node in sorted(neighbours)],
            gossip=True,
        )

    # Reductions ---------------------------------------------------------

    def reduce_values(self, reduce_op, value, destinations, options):
        """Reduces over this worker's devices only, unless asked otherwise.

        Keras reduces the loss and metrics of every step (`Strategy.reduce`
        and reads of sync-on-read metric variables). Across workers that is
        a global all-reduce per step: a barrier that would undo what gossip
        saves. With gossip every worker trains its own model, so it reports
        its own loss and metrics; `consensus_distance` and `average_weights`
        reduce globally on purpose (`global_reductions`).
        """
        if self._global_reductions:
            return super().reduce_values(
                reduce_op, value, destinations, options
            )
        self.hook_counts["local_reduce"] += 1
        return tf.nest.map_structure(
            lambda v: self._local_reduce(reduce_op, v, destinations), value
        )

    def _local_reduce(self, reduce_op, value, destinations):
        if not isinstance(value, tf.distribute.DistributedValues):
            return _tf_private.reduce_non_distributed_value(
                reduce_op, value, destinations, len(self.worker_devices)
            )
        if len(value.values) == 1:
            return value.values[0]
        return tf.distribute.ReductionToOneDevice().reduce(
            reduce_op, value, destinations
        )

    @contextlib.contextmanager
    def global_reductions(self):
        """Within the block, `Strategy.reduce` spans every worker."""
        previous = self._global_reductions
        self._global_reductions = True
        try:
            yield
        finally:
            self._global_reductions = previous

    def global_mean(self, tensor):
        """Returns the mean over all workers of `tensor` (a collective)."""
        copies = []
        for device in self.worker_devices:
            with tf.device(device):
                copies.append(tf.identity(tensor))
        per_replica = _tf_private.per_replica(copies)
        with self.global_reductions():
            return self.container_strategy().reduce(
                _MEAN, per_replica, axis=None
            )

    # Consensus ------------------------------------------------------------

    def consensus_distance(self, model_or_variables) -> float:
        """`(1/n) sum_i ||x_i - x_bar||^2` over every worker's copy.

        A collective: every worker must call it.
        """
        variables = gossip_variables(
            self.container_strategy(), model_or_variables, trainable=True
        )
        total = 0.0
        for group in packing.group_by_dtype(variables).values():
            with tf.device(self.worker_devices[0]):
                local = tf.cast(self._pack_local(group), tf.float64)
                mean = self.global_mean(local)
                own = tf.reduce_sum(tf.square(local - mean))
                total += float(self.global_mean(own))
        return total

    def average_weights(self, model_or_variables) -> None:
        """Sets every copy on every worker to the average over workers.

        A collective: every worker must call it.
        """
        variables = gossip_variables(
            self.container_strategy(), model_or_variables, trainable=False
        )
        variables = [v for v in variables if v.is_averaged]
        for group in packing.group_by_dtype(variables).values():
            with tf.device(self.worker_devices[0]):
                mean = self.global_mean(self._pack_local(group))
            self._assign_every_copy(group, mean)

    # Checkpoints (see _keras_hooks.TrainFunctionHooks) ------------------

    def keras_checkpoint_writer(self) -> bool:
        """The chief (or worker 0) writes BackupAndRestore and
        ModelCheckpoint files; the others write into scratch directories."""
        return self.should_checkpoint

    def keras_backup_write(self, model, save):
        """BackupAndRestore's backup holds the consensus model: every worker
        averages (a collective), the chief writes, every worker gets its own
        weights back."""
        own = [w.copy() for w in model.get_weights()]
        self.average_weights(model)
        try:
            return save()
        finally:
            model.set_weights(own)

    def keras_backup_restored(self, model):
        """Every worker resumes from the chief's backup: the consensus."""
        with self.global_reductions():
            _collective.broadcast_training_state(
                self.container_strategy(), model
            )

    def consensus_write(self, model, write) -> bool:
        """Runs `write()` on the chief with the averaged model in place.

        Every worker must call it (the average is a collective); every
        worker then gets its own weights back. Returns whether this worker
        wrote.
        """
        own = [w.copy() for w in model.get_weights()]
        self.average_weights(model)
        try:
            if self.should_checkpoint:
                write()
                return True
            return False
        finally:
            model.set_weights(own)
