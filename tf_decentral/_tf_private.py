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

import os

# pylint: disable=g-direct-tensorflow-import,unused-import
# MirroredExtended: base of the single-host GossipStrategy implementation
# (`_update`, `_create_variable`, `_devices`, `_num_replicas_in_sync`,
# `_get_variable_creator_initial_value`, `_use_merge_call`).
# DistributedValues, MirroredVariable, PerReplica: the per-replica values and
# the variable class whose cross-replica read we replace by the average.
# distribute_utils.create_mirrored_variable and the class/policy mappings:
# creating our variable class in `_create_variable`.
# distribute_lib.has_strategy / get_update_replica_id: telling an
# out-of-scope read (get_weights, save) from a replica or update read.
# numpy_dataset.SingleDevice: `colocate_with` handling copied from TF.
# context.device_policy / record.stop_recording: as in TF's variable creator.
# CollectiveAllReduceExtended: base of the multi-worker GossipStrategy and of
# AllReduceStrategy (`_reduce_to`, `_num_workers`, `_id_in_cluster`,
# `_num_devices_per_worker`, `_communication_options`).
# CollectiveAllReduceStrategy: base class of AllReduceStrategy.
# collective_util.Options: default communication options (timeouts).
# collective_ops.broadcast_send_v2 / broadcast_recv_v2: the neighbour
# exchange of multi-worker gossip (tf_decentral/ops/neighbor_exchange.py).
# nest: Keras 3 passes nested structures to `Strategy.reduce`.
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
from tensorflow.python.distribute import collective_all_reduce_strategy  # noqa: F401
from tensorflow.python.distribute import collective_util  # noqa: F401

# cross_device_ops.reduce_non_distributed_value: worker-local reductions.
from tensorflow.python.distribute import cross_device_ops  # noqa: F401
from tensorflow.python.distribute import distribute_lib  # noqa: F401
from tensorflow.python.distribute import distribute_utils  # noqa: F401
from tensorflow.python.distribute import input_util
from tensorflow.python.distribute import mirrored_strategy  # noqa: F401
from tensorflow.python.distribute import numpy_dataset  # noqa: F401
from tensorflow.python.distribute import one_device_strategy
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
from tensorflow.python.ops import variable_scope  # noqa: F401
from tensorflow.python.util import nest  # noqa: F401

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

    Subclasses override `reduce_to` instead of TF's private `_reduce_to`.
    """

    def _reduce_to(self, reduce_op, value, destinations, options):
        return self.reduce_to(reduce_op, value, destinations, options)

    def reduce_to(self, reduce_op, value, destinations, options):
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

PRIVATE_NAMES.update({})

# (end of the GossipStrategy section)


# =====================================================================
# AsyncGossipStrategy (strategies/async_gossip/)
# =====================================================================

PRIVATE_NAMES.update({
    "tensorflow.python.distribute.one_device_strategy": (
        "OneDeviceExtended, base of AsyncGossipStrategy's implementation: "
        "one replica per worker process, on its client device"
    ),
    "tensorflow.python.distribute.input_util": (
        "get_distributed_datasets_from_function, which OneDeviceExtended's "
        "`_distribute_datasets_from_function` calls with a default "
        "InputContext; AsyncGossipStrategy passes one naming the worker's "
        "input pipeline"
    ),
    "_distribute_datasets_from_function": (
        "the hook behind Strategy.distribute_datasets_from_function; "
        "overridden to give `dataset_fn` this worker's InputContext"
    ),
    "_input_workers_with_options": (
        "OneDeviceExtended's input workers (its one client device), which "
        "get_distributed_datasets_from_function needs"
    ),
    "_container_strategy": (
        "the public Strategy of an extended, which "
        "get_distributed_datasets_from_function needs"
    ),
    "TF_PS_DISABLE_ASYNC_EXECUTOR_GLOBALLY": (
        "makes `context.async_wait()` a no-op, as ParameterServerStrategy "
        "sets it before it connects: Keras calls it at the end of every "
        "epoch (and TF's distributed iterators when created); it syncs the "
        "executors of every server of the cluster and waits for ever on a "
        "dead peer, which an AsyncGossipStrategy worker must outlive"
    ),
})


class OneDeviceExtended(one_device_strategy.OneDeviceExtended):
    """TF's `OneDeviceExtended` with a public-named input hook.

    Subclasses override `dataset_input_contexts` to choose the
    `tf.distribute.InputContext` that `distribute_datasets_from_function`
    passes to `dataset_fn`, instead of TF's private
    `_distribute_datasets_from_function`.
    """

    def _distribute_datasets_from_function(self, dataset_fn, options):
        contexts = self.dataset_input_contexts()
        if contexts is None:
            return super()._distribute_datasets_from_function(
                dataset_fn, options
            )
        return input_util.get_distributed_datasets_from_function(
            dataset_fn,
            self._input_workers_with_options(options),
            list(contexts),
            self._container_strategy(),
            options=options,
        )

    def dataset_input_contexts(self):
        """Returns the `InputContext`s for `dataset_fn` (one per input
        pipeline of this process), or None for TF's default."""
        return None


def disable_async_executor_globally() -> None:
    """Makes `context.async_wait()` a no-op in this process.

    Must be called before the process connects to its cluster (see
    `PRIVATE_NAMES["TF_PS_DISABLE_ASYNC_EXECUTOR_GLOBALLY"]`).
    """
    os.environ["TF_PS_DISABLE_ASYNC_EXECUTOR_GLOBALLY"] = "True"

# (end of the AsyncGossipStrategy section)


# =====================================================================
# DownpourParameterServerStrategy (strategies/downpour/)
# =====================================================================

PRIVATE_NAMES.update({})

# (end of the DownpourParameterServerStrategy section)
