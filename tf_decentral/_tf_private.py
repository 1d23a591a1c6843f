"""Every private TensorFlow name tf_decentral uses, in one place.

`tf.distribute` has no public extension API (tensorflow/tensorflow#32355): a
new strategy must subclass the implementation classes under
`tensorflow.python.distribute`, override their private methods and read
their private attributes. This module is the only one that does: it turns
each private name into an adapter (a subclass whose private hook calls a
public-named method, a property, or a function), and `PRIVATE_NAMES` says
why each one is needed, so a TensorFlow upgrade can be checked against one
list. `tests/private_names_test.py` fails on a private TensorFlow import,
attribute or environment variable used anywhere else, and on a name used
here but not listed (or listed but no longer used). The tests under
`tests/strategies/` assert that the hooks built on these fire.

The Keras counterpart is `tf_decentral/_keras_private.py`.
"""

# pylint: disable=g-direct-tensorflow-import,unused-import
# (GossipStrategy's modules are explained in its `PRIVATE_NAMES` section.)
# CollectiveAllReduceExtended: base of the multi-worker GossipStrategy and of
# AllReduceStrategy (`_reduce_to`, `_num_workers`, `_id_in_cluster`,
# `_num_devices_per_worker`, `_communication_options`).
# CollectiveAllReduceStrategy: base class of AllReduceStrategy.
# collective_util.Options: default communication options (timeouts).
# OneDeviceExtended: base of AsyncGossipStrategy's implementation (one
# replica per worker process; `_input_workers_with_options`).
# input_util.get_distributed_datasets_from_function: AsyncGossipStrategy
# gives `dataset_fn` an InputContext naming the worker's input pipeline.
# parameter_server_strategy_v2.ParameterServerStrategyV2Extended: base of the
# DownpourParameterServerStrategy implementation (`_create_variable`,
# `_create_variable_round_robin`, `_variable_partitioner`, `_num_ps`,
# `_num_workers`, `_allow_run_without_coordinator`).
# sharded_variable.ShardedVariable: the container of a row-sharded Downpour
# variable (our subclass adds `__array__`).
# ops.colocate_with(None, ignore_existing=True): clearing the colocation scope
# when placing a Downpour variable, as ParameterServerStrategy does (the
# public tf.compat.v1.colocate_with logs a deprecation warning).
# coordinator_values.serialize_dataset_to_graph /
# deserialize_dataset_from_graph: shipping the chief's input pipeline to every
# Downpour worker (as ClusterCoordinator.create_per_worker_dataset does).
import tensorflow as tf
from tensorflow.python.distribute import collective_all_reduce_strategy  # noqa: F401
from tensorflow.python.distribute import collective_util  # noqa: F401
from tensorflow.python.distribute import cross_device_ops  # noqa: F401
from tensorflow.python.distribute import distribute_lib  # noqa: F401
from tensorflow.python.distribute import distribute_utils  # noqa: F401
from tensorflow.python.distribute import input_util  # noqa: F401
from tensorflow.python.distribute import mirrored_strategy  # noqa: F401
from tensorflow.python.distribute import numpy_dataset  # noqa: F401
from tensorflow.python.distribute import one_device_strategy  # noqa: F401
from tensorflow.python.distribute import parameter_server_strategy_v2  # noqa: F401
from tensorflow.python.distribute import sharded_variable  # noqa: F401
from tensorflow.python.distribute import values as values_lib  # noqa: F401
from tensorflow.python.distribute.coordinator import (  # noqa: F401
    values as coordinator_values,
)
from tensorflow.python.eager import context  # noqa: F401
from tensorflow.python.eager import record  # noqa: F401
from tensorflow.python.framework import ops  # noqa: F401
from tensorflow.python.ops import collective_ops  # noqa: F401

PRIVATE_NAMES = {}
"""Every private TensorFlow name used here -> why it is needed."""


# =====================================================================
# Common: collective all-reduce (strategies/all_reduce.py, _collective.py)
# =====================================================================

PRIVATE_NAMES.update({
    "tensorflow.python.distribute.collective_all_reduce_strategy": (
        "CollectiveAllReduceExtended, base of AllReduceStrategy's and "
        "multi-worker GossipStrategy's implementations"
    ),
    "_collective_key_base": (
        "the first collective group key a Mirrored/MultiWorkerMirrored "
        "strategy numbers its groups from; every stock strategy starts at 0, "
        "so two in one process clash (see strategies/_collective.py)"
    ),
    "_reduce_to": (
        "CollectiveAllReduceExtended's reduction: Keras 3 passes nested "
        "structures it cannot map over (keras#20585), and gossip keeps "
        "per-step reductions on the worker"
    ),
})


# Collective all-reduce (MultiWorkerMirroredStrategy) -------------------


def set_collective_key_base(strategy, base: int) -> None:
    """Makes `strategy`'s collective groups start at `base + 1`.

    Must be called before the strategy's extended is created: TF's
    Mirrored/CollectiveAllReduce extended reads it in its constructor.
    """
    strategy._collective_key_base = base


class CollectiveAllReduceExtended(
    collective_all_reduce_strategy.CollectiveAllReduceExtended
):
    """TF's `CollectiveAllReduceExtended` with public-named hooks.

    Subclasses override `reduce_values` instead of TF's private `_reduce_to`
    (not the public `reduce_to`: TF's `reduce_to` validates its arguments,
    fills in `options` and then calls `_reduce_to`).
    """

    def _reduce_to(self, reduce_op, value, destinations, options):
        return self.reduce_values(reduce_op, value, destinations, options)

    def reduce_values(self, reduce_op, value, destinations, options):
        """Reduces `value` as TF's collective extended does."""
        return collective_reduce_to(
            self, reduce_op, value, destinations, options
        )


def collective_reduce_to(extended, reduce_op, value, destinations, options):
    """TF's `CollectiveAllReduceExtended._reduce_to` on `extended`."""
    return collective_all_reduce_strategy.CollectiveAllReduceExtended._reduce_to(  # noqa: E501
        extended, reduce_op, value, destinations, options
    )


# =====================================================================
# GossipStrategy (strategies/gossip/, ops/neighbor_exchange.py)
# =====================================================================

PRIVATE_NAMES.update({
    "tensorflow.python.distribute.mirrored_strategy": (
        "MirroredExtended, base of the single-host GossipStrategy "
        "implementation (one variable copy per local device)"
    ),
    "tensorflow.python.distribute.values": (
        "MirroredVariable, the base of GossipVariable, and PerReplica, the "
        "per-device copies a worker feeds to a global reduction"
    ),
    "tensorflow.python.distribute.distribute_utils": (
        "create_mirrored_variable and its class/policy mappings: how "
        "MirroredExtended._create_variable builds a mirrored variable, "
        "called with GossipVariable as the mirrored class"
    ),
    "tensorflow.python.distribute.distribute_lib": (
        "get_update_replica_id: tells a read inside `extended.update` from "
        "an out-of-scope read (get_weights, save), which gossip averages"
    ),
    "tensorflow.python.distribute.numpy_dataset": (
        "SingleDevice: the `colocate_with` case of TF's variable creator, "
        "copied in create_mirrored_variable"
    ),
    "tensorflow.python.eager.context": (
        "device_policy(DEVICE_PLACEMENT_SILENT) around each copy's creation, "
        "as in TF's MirroredExtended._create_variable"
    ),
    "tensorflow.python.eager.record": (
        "stop_recording() around each copy's creation, as in TF's "
        "MirroredExtended._create_variable"
    ),
    "tensorflow.python.distribute.cross_device_ops": (
        "reduce_non_distributed_value: multi-worker gossip reduces a plain "
        "tensor over one worker's devices only"
    ),
    "tensorflow.python.ops.collective_ops": (
        "broadcast_send_v2 / broadcast_recv_v2: the pairwise neighbour "
        "exchange of multi-worker gossip (ops/neighbor_exchange.py); "
        "tf.raw_ops would need the group and instance keys as tensors and "
        "has no timeout"
    ),
    "_container_strategy": (
        "the Strategy an extended implements (a weak reference in TF); "
        "gossip's variable creator and global mean need it"
    ),
    "_create_variable": (
        "StrategyExtended's variable creator hook: gossip creates "
        "GossipVariables (per-replica copies that may differ)"
    ),
    "_use_merge_call": (
        "MirroredExtended may skip merge_call under XLA on GPUs; gossip's "
        "optimizer hooks run in merge_call, so it is kept unconditional"
    ),
    "_get_variable_creator_initial_value": (
        "the initial value of copy i (copied from copy 0 on one host, "
        "broadcast from worker 0 in a cluster), used by the variable creator"
    ),
    "_devices": (
        "the devices of a `colocate_with` variable in TF's variable creator "
        "(DistributedValues has no public name for them)"
    ),
    "_get_cross_replica": (
        "MirroredVariable's cross-replica read; a GossipVariable returns the "
        "average of its copies"
    ),
    "_get": (
        "DistributedValues' read in the current context; outside every "
        "strategy scope a GossipVariable reads the average, not copy 0"
    ),
    "_num_workers": (
        "number of workers of a CollectiveAllReduceExtended: the gossip "
        "nodes, and the gradient scale of multi-worker gossip"
    ),
    "_id_in_cluster": (
        "this worker's index among chief and workers: its gossip node"
    ),
    "_cluster_spec": (
        "the cluster's addresses, to name a lost gossip neighbour in errors"
    ),
    "_task_type": "this task's job name, named in communication errors",
    "_task_id": "this task's index in its job, named in communication errors",
})


class GossipExtendedNames(tf.distribute.StrategyExtended):
    """Public names for what gossip uses of TF's extended classes.

    Mixed in before a TF `StrategyExtended` subclass. Subclasses override
    `create_variable` and `use_merge_call` instead of TF's private
    `_create_variable` and `_use_merge_call`.
    """

    def container_strategy(self):
        """Returns the `tf.distribute.Strategy` this extended implements."""
        return self._container_strategy()

    def _create_variable(self, next_creator, **kwargs):
        return self.create_variable(next_creator, **kwargs)

    def create_variable(self, next_creator, **kwargs):
        """Creates a variable under the strategy's scope (TF's default)."""
        return super()._create_variable(next_creator, **kwargs)

    def _use_merge_call(self):
        return self.use_merge_call()

    def use_merge_call(self):
        """Whether replica code enters `merge_call` (TF's default)."""
        return super()._use_merge_call()


class MirroredExtended(GossipExtendedNames, mirrored_strategy.MirroredExtended):
    """TF's `MirroredExtended` with public-named hooks (single-host gossip)."""


class GossipCollectiveExtended(
    GossipExtendedNames, CollectiveAllReduceExtended
):
    """The collective adapter with what multi-worker gossip reads of it."""

    @property
    def num_workers(self) -> int:
        """Number of workers (chief included) the collectives span."""
        return self._num_workers

    @property
    def id_in_cluster(self) -> int:
        """This worker's index among chief and workers (chief first)."""
        return self._id_in_cluster

    @property
    def cluster_spec(self) -> tf.train.ClusterSpec:
        """The cluster this worker belongs to."""
        return self._cluster_spec

    @property
    def task_type(self) -> str:
        """This task's job name (`"chief"` or `"worker"`)."""
        return self._task_type

    @property
    def task_id(self) -> int:
        """This task's index in its job."""
        return self._task_id


class MirroredVariable(values_lib.MirroredVariable):
    """TF's `MirroredVariable` with public-named read hooks.

    Subclasses override `read_cross_replica` and `read_in_context` instead of
    TF's private `_get_cross_replica` and `_get`.
    """

    def _get_cross_replica(self):
        return self.read_cross_replica()

    def read_cross_replica(self):
        """The value of a cross-replica read (TF's: the first copy)."""
        return super()._get_cross_replica()

    def _get(self):
        return self.read_in_context()

    def read_in_context(self):
        """The value a read returns in the current replica context."""
        return super()._get()


def update_replica_id():
    """Returns the replica id inside `extended.update`, else None."""
    return distribute_lib.get_update_replica_id()


def per_replica(values):
    """Returns a `PerReplica` of `values` (one tensor per local device)."""
    return values_lib.PerReplica(tuple(values))


def reduce_non_distributed_value(reduce_op, value, destinations, num_replicas):
    """Reduces a plain (non-distributed) `value` as TF's reductions do."""
    return cross_device_ops.reduce_non_distributed_value(
        reduce_op, value, destinations, num_replicas
    )


def create_mirrored_variable(extended, next_creator, mirrored_class, **kwargs):
    """TF 2.21's `MirroredExtended._create_variable`, with our class.

    Creates one copy per device of `extended.worker_devices` (or of the
    `colocate_with` variable's devices) and wraps them in `mirrored_class`
    (for `ON_WRITE` and `AUTO` synchronization; the others keep TF's class).
    """
    colocate_with = kwargs.pop("colocate_with", None)
    if colocate_with is None:
        devices = extended.worker_devices
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
                    extended._get_variable_creator_initial_value(
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

    class_mapping = dict(distribute_utils.VARIABLE_CLASS_MAPPING)
    class_mapping[tf.VariableSynchronization.ON_WRITE] = mirrored_class
    class_mapping[tf.VariableSynchronization.AUTO] = mirrored_class
    return distribute_utils.create_mirrored_variable(
        extended._container_strategy(),
        _real_mirrored_creator,
        class_mapping,
        distribute_utils.VARIABLE_POLICY_MAPPING,
        **kwargs,
    )


def broadcast_send(tensor, *, group_key, instance_key, timeout):
    """Sends `tensor` to the other member of a two-member group."""
    return collective_ops.broadcast_send_v2(
        tensor,
        group_size=2,
        group_key=group_key,
        instance_key=instance_key,
        timeout=timeout,
    )


def broadcast_recv(shape, dtype, *, group_key, instance_key, timeout):
    """Receives the tensor the other member of a two-member group sends."""
    return collective_ops.broadcast_recv_v2(
        shape,
        dtype,
        group_size=2,
        group_key=group_key,
        instance_key=instance_key,
        timeout=timeout,
    )


# (end of the GossipStrategy section)


# =====================================================================
# AsyncGossipStrategy (strategies/async_gossip/)
# =====================================================================

PRIVATE_NAMES.update({})

# (end of the AsyncGossipStrategy section)


# =====================================================================
# DownpourParameterServerStrategy (strategies/downpour/)
# =====================================================================

PRIVATE_NAMES.update({})

# (end of the DownpourParameterServerStrategy section)
