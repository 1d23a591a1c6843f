"""Implementation of `GossipStrategy` across the workers of a TF cluster.

The gossip nodes are the workers (chief first, then workers, TF's order).
The devices of one worker hold identical copies: their gradients are
all-reduced among themselves (hierarchically, before gossip), so every local
copy takes the same step. Workers mix their packed parameters with their
neighbours over two-member collective groups
(`tf_decentral.ops.neighbor_exchange`).
"""

import collections
import contextlib
import re

import tensorflow as tf

from tf_decentral import topology as topology_lib
from tf_decentral._tf_private import collective_all_reduce_strategy
from tf_decentral._tf_private import cross_device_ops
from tf_decentral._tf_private import nest
from tf_decentral._tf_private import values_lib
from tf_decentral.ops import neighbor_exchange
from tf_decentral.ops import packing
from tf_decentral.strategies._collective import Keras3ExtendedFixes
from tf_decentral.strategies.gossip.strategy import GossipOptimizerHooks
from tf_decentral.strategies.gossip.strategy import GossipVariableCreator
from tf_decentral.strategies.gossip.strategy import scale_gradients

_SUM = tf.distribute.ReduceOp.SUM
_MEAN = tf.distribute.ReduceOp.MEAN


class MultiWorkerGossipExtended(
    GossipVariableCreator,
    Keras3ExtendedFixes,
    collective_all_reduce_strategy.CollectiveAllReduceExtended,
    GossipOptimizerHooks,
):
    """Gossip between workers; all-reduce among one worker's devices."""

    def __init__(self, container, cluster_resolver, options, topology, update):
        self.hook_counts = collections.Counter()
        super().__init__(
            container,
            cluster_resolver=cluster_resolver,
            communication_options=options,
        )
        self._topology = topology_lib.resolve(topology, self._num_workers)
        self._update_rule = update
        self._node = self._id_in_cluster
        self._timeout = options.timeout_seconds
        self._global_reductions = False

    @property
    def node(self) -> int:
        """This worker's index among the gossip nodes."""
        return self._node

    def _use_merge_call(self):
        return True

    # Optimizer hooks ----------------------------------------------------

    def keras_reduce_gradients(self, optimizer, grads_and_vars):
        """All-reduces gradients among this worker's devices only.

        Keras scaled the loss by `1 / (workers * local devices)`; the local
        sum times the number of workers is this worker's mean gradient.
        """
        self.hook_counts["local_gradients"] += 1
        scale = self._num_workers
        if self._num_devices_per_worker > 1:
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
                if all("GPU" in d.upper() for d in self._devices)
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
        by_dtype = collections.defaultdict(list)
        for v in variables:
            by_dtype[v.dtype.base_dtype].append(v)
        for slot, group in enumerate(by_dtype.values()):
            shapes = [v.shape for v in group]
            with tf.device(self._devices[0]):
                buffer = packing.pack([v.values[0].read_value() for v in group])
                mixed = neighbor_exchange.gossip_round(
                    buffer,
                    self._topology,
                    self._node,
                    step,
                    slot=slot,
                    timeout=self._timeout,
                )
            for r, device in enumerate(self._devices):
                with tf.device(device):
                    parts = packing.unpack(mixed, shapes)
                    for v, part in zip(group, parts):
                        v.values[r].assign(part, read_value=False)

    # Errors ---------------------------------------------------------------

    def _node_task(self, node):
        """Returns `(task_type, task_id, address)` of gossip node `node`."""
        spec = self._cluster_spec.as_dict()
        tasks = [("chief", i) for i in range(len(spec.get("chief", [])))]
        tasks += [("worker", i) for i in range(len(spec.get("worker", [])))]
        task_type, task_id = tasks[node]
        return task_type, task_id, spec[task_type][task_id]

    def explain_communication_error(self, error):
        text = getattr(error, "message", str(error))
        spec = self._cluster_spec.as_dict()
        named = []
        for job, index in re.findall(
            r"/job:(\w+)/replica:\d+/task:(\d+)", text
        ):
            index = int(index)
            address = spec.get(job, [None] * (index + 1))[index]
            if (job, index) != (self._task_type, self._task_id):
                label = f"{job}:{index} ({address})"
                if label not in named:
                    named.append(label)
        neighbours = set()
        for t in range(self._topology.period):
            neighbours.update(self._topology.neighbors(self._node, t))
            neighbours.update(self._topology.out_neighbors(self._node, t))
        neighbour_labels = []
        for node in sorted(neighbours):
            task_type, task_id, address = self._node_task(node)
            neighbour_labels.append(f"{task_type}:{task_id} ({address})")
        culprit = ", ".join(named) if named else "a peer (TF did not say which)"
        aborted = text.find("Collective ops is aborted")
        detail = text[aborted:] if aborted >= 0 else text[-1500:]
        timeout = f"{self._timeout:g} s" if self._timeout else "no timeout"
        return (
            f"Gossip training on {self._task_type}:{self._task_id} (gossip "
            f"node {self._node} of {self._topology.num_nodes}) lost contact "
            f"with {culprit}: {type(error).__name__}. This worker's gossip "
            f"neighbours are {', '.join(neighbour_labels)}. The peer has "
            "probably stopped (crash, out of memory, preemption) or is "
            "unreachable; collectives give up after "
            f"{timeout} (set with communication_options="
            "tf.distribute.experimental.CommunicationOptions("
            "timeout_seconds=...)). Check that worker's log, then restart "
            "every worker: with keras.callbacks.BackupAndRestore, training "
            "resumes from the last checkpoint.\n\nTensorFlow's error: "
            + detail[:2000]
        )

    # Reductions ---------------------------------------------------------

    def _reduce_to(self, reduce_op, value, destinations, options):
        """Reduces over this worker's devices only, unless asked otherwise.

        Keras reduces the loss and metrics of every step (`Strategy.reduce`
        and reads of sync-on-read metric variables). Across workers that is
        a global all-reduce per step: a barrier that would undo what gossip
        saves. With gossip every worker trains its own model, so it reports
        its own loss and metrics; `consensus_distance` and `average_weights`
        reduce globally on purpose (`global_reductions`).
        """
        if self._global_reductions:
            return super()._reduce_to(reduce_op, value, destinations, options)
        self.hook_counts["local_reduce"] += 1
        return nest.map_structure(
            lambda v: self._local_reduce(reduce_op, v, destinations), value
        )

    def _local_reduce(self, reduce_op, value, destinations):
        if not isinstance(value, values_lib.DistributedValues):
            return cross_device_ops.reduce_non_distributed_value(
                reduce_op, value, destinations, len(self._devices)
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
        for device in self._devices:
            with tf.device(device):
                copies.append(tf.identity(tensor))
        per_replica = values_lib.PerReplica(tuple(copies))
        with self.global_reductions():
            return self._container_strategy().reduce(
                _MEAN, per_replica, axis=None
            )
