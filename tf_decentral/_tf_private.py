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

Longer than 500 lines because the issue it answers asks for one inventory
per library: every adapter of a private TensorFlow name is here, in one
section per strategy, so that an upgrade is checked against one file.
"""

import contextlib
import os

# pylint: disable=g-direct-tensorflow-import
# What each private module is used for is said where it is used, in the
# section of the strategy that needs it, and in `PRIVATE_NAMES`.
import tensorflow as tf
from tensorflow.python.distribute import collective_all_reduce_strategy  # noqa: F401
from tensorflow.python.distribute import cross_device_ops  # noqa: F401
from tensorflow.python.distribute import cross_device_utils
from tensorflow.python.distribute import distribute_lib  # noqa: F401
from tensorflow.python.distribute import distribute_utils  # noqa: F401
from tensorflow.python.distribute import input_util
from tensorflow.python.distribute import mirrored_strategy  # noqa: F401
from tensorflow.python.distribute import numpy_dataset  # noqa: F401
from tensorflow.python.distribute import one_device_strategy
from tensorflow.python.distribute import parameter_server_strategy_v2
from tensorflow.python.distribute import sharded_variable
from tensorflow.python.distribute import values as values_lib  # noqa: F401
from tensorflow.python.distribute.coordinator import (
    values as coordinator_values,
)
from tensorflow.python.eager import context  # noqa: F401
from tensorflow.python.eager import record  # noqa: F401
from tensorflow.python.eager.polymorphic_function import atomic_function
from tensorflow.python.framework import ops
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
    "tensorflow.python.eager.polymorphic_function.atomic_function": (
        "InterpolateRuntimeError, which adds the failing node's Python "
        "stack to a TF function's error by reading the context's graph "
        "debug info; after a collective abort that read crashes the "
        "process (SIGSEGV or 'Mutex corrupt' SIGABRT in "
        "TFE_ContextGetGraphDebugInfo, 3 of 23 peer-hang runs), so it is "
        "skipped for collective aborts (see "
        "skip_error_interpolation_on_collective_aborts)"
    ),
    "tensorflow.python.distribute.cross_device_utils": (
        "CollectiveReplicaLauncher._next_instance_key, which defers a "
        "collective's instance key to call time in the innermost function "
        "graph; Keras' steps_per_execution loop calls its step function "
        "(a nested tf.function) inside tf.while_loop and tf.cond, where "
        "that deferred capture is never fed (multi-worker `fit` with "
        "steps_per_execution > 1 fails: 'You must feed a value for "
        "placeholder tensor'), so it is taken in the function that holds "
        "the loop (see defer_instance_keys_past_nested_functions)"
    ),
    "_next_instance_key": (
        "the launcher method that defer_instance_keys_past_nested_functions "
        "wraps (why: see tensorflow.python.distribute.cross_device_utils)"
    ),
    "_use_unique_instance_key": (
        "whether a launcher defers instance keys at all (TF1 graph mode "
        "does not); the patch above keeps TF's keys when it does not"
    ),
    "_communication_options": (
        "the CommunicationOptions MWMS's extended merges into every "
        "collective it builds; AllReduceStrategy swaps in a 0 per-op "
        "timeout while Keras' step is traced (the step watchdog times it "
        "out instead: see _collective.StepWatchdog)"
    ),
})


@contextlib.contextmanager
def collective_options_of(extended, options):
    """Within the block, `extended` (a CollectiveAllReduceExtended) builds
    its collectives with `options` in place of its own."""
    saved = extended._communication_options
    extended._communication_options = options
    try:
        yield
    finally:
        extended._communication_options = saved


def collective_options(extended):
    """The CommunicationOptions of a CollectiveAllReduceExtended."""
    return extended._communication_options


# Collective all-reduce (MultiWorkerMirroredStrategy) -------------------

COLLECTIVE_ABORT_PHRASES = (
    "Collective ops is aborted",
    "Collective has timed out",
)
"""What TF's error says when a collective timed out or was aborted."""

_interpolation_patched = []


def skip_error_interpolation_on_collective_aborts() -> None:
    """Leaves a TF function's error message as TF raised it when it says a
    collective was aborted or timed out (idempotent, process-wide).

    TF 2.21 rewrites the message of an error raised by a TF function with
    the failing node's Python stack, read with
    `TFE_ContextGetGraphDebugInfo`. Right after a collective abort that
    read crashes the process now and then (measured on the multi-worker
    GossipStrategy peer-hang test: SIGSEGV, or SIGABRT "Mutex corrupt",
    in 3 of 23 runs; 0 of 16 with this). The strategies explain such
    errors themselves (which peer was lost, what to do).
    """
    if _interpolation_patched:
        return
    cls = atomic_function.InterpolateRuntimeError
    original = cls.__exit__

    def exit_without_collective_aborts(self, typ, exc, tb):
        if isinstance(exc, tf.errors.OpError) and any(
            phrase in (exc.message or "")
            for phrase in COLLECTIVE_ABORT_PHRASES
        ):
            return False
        return original(self, typ, exc, tb)

    cls.__exit__ = exit_without_collective_aborts
    _interpolation_patched.append(original)


_instance_keys_patched = []


def _function_holding_control_flow(graph):
    """Returns the function graph to defer an instance key to at `graph`
    (the default graph while a collective is traced), or None when TF's
    own choice is right.

    TF climbs from `graph` past control-flow graphs to the first function
    graph F and defers the key there. That fails when F is a nested
    function called inside control flow of an outer function (Keras'
    `one_step_on_data` in its `steps_per_execution` while loop): here the
    climb goes on to the function graph that holds that control flow.
    """
    while getattr(graph, "is_control_flow_graph", False):
        graph = graph.outer_graph
    graph = getattr(graph, "outer_graph", None)  # past TF's choice
    crossed_control_flow = False
    while getattr(graph, "building_function", False):
        if getattr(graph, "is_control_flow_graph", False):
            crossed_control_flow = True
        elif crossed_control_flow:
            return graph
        graph = graph.outer_graph
    return None


def defer_instance_keys_past_nested_functions() -> None:
    """Makes TF's collective launchers defer an instance key to the function
    that holds the control flow a nested function is called in (idempotent,
    process-wide; everywhere else TF's choice is kept).

    TF 2.21 defers each collective's instance key to call time with a
    capture of the innermost function graph; inside a nested tf.function
    called in a `tf.while_loop`/`tf.cond` that capture is never fed. Keras'
    `steps_per_execution > 1` does exactly that, so a multi-worker `fit`
    of MultiWorkerMirroredStrategy (and AllReduceStrategy) failed with "You
    must feed a value for placeholder tensor 'while/cond/Placeholder'".
    Deferred to the outer function, one key serves every iteration of the
    loop, as TF's keys do for a collective in a loop of one function.
    """
    if _instance_keys_patched:
        return
    cls = cross_device_utils.CollectiveReplicaLauncher
    original = cls._next_instance_key

    def next_instance_key(self):
        if not self._use_unique_instance_key() or context.executing_eagerly():
            return original(self)
        outer = _function_holding_control_flow(ops.get_default_graph())
        if outer is None:
            return original(self)
        with outer.as_default():
            return outer.capture_call_time_value(
                lambda: original(self), tf.TensorSpec([], tf.int32)
            )

    cls._next_instance_key = next_instance_key
    _instance_keys_patched.append(original)


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
    fills in `options` and then calls `_reduce_to`). Creating one installs
    `skip_error_interpolation_on_collective_aborts` and
    `defer_instance_keys_past_nested_functions`.
    """

    def __init__(self, *args, **kwargs):
        skip_error_interpolation_on_collective_aborts()
        defer_instance_keys_past_nested_functions()
        super().__init__(*args, **kwargs)

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
        "as in TF's MirroredExtended._create_variable; for "
        "AsyncGossipStrategy's rejoin, check_alive / get_server_def / "
        "update_server_def, as TF's ClusterCoordinator uses them to take a "
        "restarted worker back (see reattach_restarted_task); "
        "abort_collective_ops, as MWMS's health check uses it: the "
        "collective strategies' one step watchdog per process in place of "
        "TF's per-op timeout, which starts a thread per collective op that "
        "sleeps the whole timeout (see _collective.StepWatchdog)"
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
    "_experimental_distribute_dataset": (
        "the hook behind Strategy.experimental_distribute_dataset; "
        "overridden so that by default the worker's iterator is a plain "
        "tf.data iterator, not TF's MultiDeviceIterator, whose destructor "
        "frees its source dataset while its prefetch thread still reads it "
        "(SIGSEGV at Keras' EpochIterator.reset)"
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


def _without_multi_device_iterator(options):
    """Default input options: a plain iterator on the one input device.

    TF's default (`options=None`) iterates through a `MultiDeviceIterator`,
    whose destructor (TF 2.21) releases its source dataset before it stops
    its background prefetch thread: when Keras drops a partly consumed
    iterator (`EpochIterator.reset`, at the start of `fit`/`evaluate`), that
    thread can still be inside `GetNext` on the freed dataset (SIGSEGV).
    One replica on one device needs no multi-device iterator.
    """
    if options is not None:
        return options
    return tf.distribute.InputOptions(
        experimental_fetch_to_device=False,
        experimental_replication_mode=(
            tf.distribute.InputReplicationMode.PER_REPLICA
        ),
    )


class OneDeviceExtended(one_device_strategy.OneDeviceExtended):
    """TF's `OneDeviceExtended` with a public-named input hook.

    Subclasses override `dataset_input_contexts` to choose the
    `tf.distribute.InputContext` that `distribute_datasets_from_function`
    passes to `dataset_fn`, instead of TF's private
    `_distribute_datasets_from_function`.
    """

    def _experimental_distribute_dataset(self, dataset, options):
        # No MultiDeviceIterator (see `_without_multi_device_iterator`).
        options = _without_multi_device_iterator(options)
        return input_util.get_distributed_dataset(
            dataset,
            self._input_workers_with_options(options),
            self._container_strategy(),
            options=options,
        )

    def _distribute_datasets_from_function(self, dataset_fn, options):
        contexts = self.dataset_input_contexts()
        if contexts is None:
            return super()._distribute_datasets_from_function(
                dataset_fn, options
            )
        # No MultiDeviceIterator (see `_without_multi_device_iterator`).
        options = _without_multi_device_iterator(options)
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


def abort_collective_ops(message: str) -> None:
    """Aborts this process's collectives with `DeadlineExceeded`, as TF's
    own per-op timeout does (`Collective ops is aborted by: message`)."""
    context.context().abort_collective_ops(
        tf.errors.DEADLINE_EXCEEDED, message
    )


def task_is_alive(task: str) -> bool:
    """Whether `task` ("/job:worker/replica:0/task:1") answers, at once.

    TF's `context.check_alive` (what ClusterCoordinator's failure handler
    probes with): True as soon as the task's server listens, even a
    restarted one whose client has not connected yet.
    """
    return bool(context.check_alive(task))


def reattach_restarted_task() -> None:
    """Re-creates this client's remote contexts on restarted tasks.

    TF's `update_server_def` with the current cluster, as ClusterCoordinator
    does when a preempted worker comes back: TF finds the tasks whose
    incarnation changed and creates a new context on each. Handles and
    functions that captured the old task's resources are invalid afterwards
    (TF: "some remote workers have been restarted"): re-create them.
    """
    context.context().update_server_def(context.get_server_def())


# (end of the AsyncGossipStrategy section)


# =====================================================================
# DownpourParameterServerStrategy (strategies/downpour/)
# =====================================================================
# `tf.distribute.experimental.ParameterServerStrategy` (TF's
# `ParameterServerStrategyV2`) is what `ClusterCoordinator` schedules
# closures for, but its constructor always builds TF's own extended, and its
# extended places variables round-robin with no public hook. Downpour needs
# its own extended (least-loaded placement, row shards, pinned bookkeeping
# variables, the Keras `FitDriver`), so these adapters give it TF's
# constructor with an extended of its choice and public-named placement
# hooks; `ShardedVariable` and the dataset (de)serialization TF's
# coordinator uses are re-exported with why.

PRIVATE_NAMES.update({
    "tensorflow.python.distribute.parameter_server_strategy_v2": (
        "ParameterServerStrategyV2 (the class behind tf.distribute."
        "experimental.ParameterServerStrategy) and its extended: the bases "
        "of DownpourParameterServerStrategy and its implementation"
    ),
    "tensorflow.python.distribute.sharded_variable": (
        "ShardedVariable, the container TF's parameter-server extended "
        "returns for a partitioned variable; Downpour's row-sharded "
        "variables subclass it (TF exports it only under tf.__internal__)"
    ),
    "tensorflow.python.distribute.coordinator.values": (
        "serialize_dataset_to_graph / deserialize_dataset_from_graph: "
        "shipping the chief's input pipeline to every Downpour worker, as "
        "ClusterCoordinator.create_per_worker_dataset does"
    ),
    "tensorflow.python.framework.ops": (
        "ops.colocate_with(None, ignore_existing=True) clears the colocation "
        "scope when a Downpour variable is placed, as TF's round robin does "
        "(the public tf.compat.v1.colocate_with logs a deprecation warning)"
    ),
    "_cluster_resolver": (
        "ParameterServerStrategyV2.__init__'s first step, read by its "
        "_connect_to_cluster; set by ParameterServerStrategyBase"
    ),
    "_verify_args_and_config": (
        "TF's own cluster checks of ParameterServerStrategyV2.__init__, "
        "called by ParameterServerStrategyBase instead of copying them"
    ),
    "_cluster_coordinator": (
        "ParameterServerStrategyV2.__init__ sets it to None; "
        "ClusterCoordinator(strategy) stores its single instance there"
    ),
    "_connect_to_cluster": (
        "TF's own connection of the chief to the cluster (device filters, "
        "eager client settings), called by ParameterServerStrategyBase"
    ),
    "_should_use_with_coordinator": (
        "flag of ParameterServerStrategyV2.__init__ (Strategy sets False) "
        "marking a strategy driven by a ClusterCoordinator; kept as TF sets it"
    ),
    "_canonicalize_devices": (
        "flag of ParameterServerStrategyV2.__init__ that TF's input_lib "
        "reads when building distributed iterators (no device canonicalizing "
        "on the chief)"
    ),
    "_is_parameter_server_strategy_v2": (
        "flag of ParameterServerStrategyV2.__init__ that ClusterCoordinator "
        "checks (hasattr) before accepting a strategy"
    ),
    "_create_variable": (
        "the parameter-server extended's variable creator (partitioning, "
        "colocation); ParameterServerExtendedBase exposes it as "
        "create_variable"
    ),
    "_create_variable_round_robin": (
        "the parameter-server extended's placement of one whole variable or "
        "shard; ParameterServerExtendedBase exposes it as place_variable"
    ),
    "_num_ps": "the number of ps tasks, counted by TF's extended",
    "_num_workers": "the number of worker tasks, counted by TF's extended",
    "_allow_run_without_coordinator": (
        "lets evaluate/predict/save run on the chief outside "
        "ClusterCoordinator.schedule without TF's warning"
    ),
})


class ParameterServerStrategyBase(
    parameter_server_strategy_v2.ParameterServerStrategyV2
):
    """TF's `ParameterServerStrategy` built on an extended of our choice.

    Does what `ParameterServerStrategyV2.__init__` does, calling TF's own
    pieces (`_verify_args_and_config`, `_connect_to_cluster` as `"chief"`),
    except that the extended is `make_extended(self, cluster_resolver)`.
    It leaves out TF's usage gauge and its opt-in coordination service
    (undocumented `TF_PSS_ENABLE_COORDINATION_SERVICE`), which Downpour has
    never used.

    Args:
        cluster_resolver: A `tf.distribute.cluster_resolver.ClusterResolver`.
        make_extended: `(strategy, cluster_resolver) -> extended`.
    """

    def __init__(self, cluster_resolver, make_extended):
        self._cluster_resolver = cluster_resolver
        self._verify_args_and_config(cluster_resolver)
        self._cluster_coordinator = None
        self._connect_to_cluster(coordinator_name="chief")
        extended = make_extended(self, cluster_resolver)
        tf.distribute.Strategy.__init__(self, extended)
        self._should_use_with_coordinator = True
        self._canonicalize_devices = False
        self._is_parameter_server_strategy_v2 = True


class ParameterServerExtendedBase(
    parameter_server_strategy_v2.ParameterServerStrategyV2Extended
):
    """TF's parameter-server extended with public-named placement hooks.

    TF's `_create_variable` calls `create_variable` (override it to wrap
    variable creation; `default_create_variable` is TF's partitioning and
    colocation), which places every whole variable or shard with
    `place_variable` (TF's round robin by default).

    Args:
        container_strategy: The strategy.
        cluster_resolver: Its cluster resolver.
        variable_partitioner: `(shape, dtype) -> partitions per axis`, or
            None (never partition).
        allow_run_without_coordinator: If True, functions may run on the
            chief outside `ClusterCoordinator.schedule` without a warning.
    """

    def __init__(
        self,
        container_strategy,
        cluster_resolver,
        variable_partitioner=None,
        allow_run_without_coordinator=False,
    ):
        super().__init__(
            container_strategy, cluster_resolver, variable_partitioner
        )
        self._allow_run_without_coordinator = allow_run_without_coordinator

    @property
    def num_ps(self) -> int:
        """The number of parameter-server tasks."""
        return self._num_ps

    @property
    def num_workers(self) -> int:
        """The number of worker tasks."""
        return self._num_workers

    def _create_variable(self, next_creator, **kwargs):
        return self.create_variable(next_creator, **kwargs)

    def create_variable(self, next_creator, **kwargs):
        """Creates a variable in the strategy's scope."""
        return self.default_create_variable(next_creator, **kwargs)

    def default_create_variable(self, next_creator, **kwargs):
        """TF's variable creation: partitions, colocates, places."""
        return parameter_server_strategy_v2.ParameterServerStrategyV2Extended._create_variable(  # noqa: E501
            self, next_creator, **kwargs
        )

    def _create_variable_round_robin(self, next_creator, **kwargs):
        return self.place_variable(next_creator, **kwargs)

    def place_variable(self, next_creator, **kwargs):
        """Creates one whole variable or shard on a ps task of its choice.

        The default is TF's round robin over the ps tasks.
        """
        return parameter_server_strategy_v2.ParameterServerStrategyV2Extended._create_variable_round_robin(  # noqa: E501
            self, next_creator, **kwargs
        )


def clear_colocation():
    """Returns a context that clears the colocation scope (as TF's
    parameter-server placement does before choosing a device)."""
    return ops.colocate_with(None, ignore_existing=True)


ShardedVariable = sharded_variable.ShardedVariable
"""TF's container of a variable partitioned by a parameter-server extended
(one `tf.Variable` per shard, read as their concatenation)."""


def serialize_dataset(dataset):
    """Returns `dataset`'s graph, to rebuild it on another task."""
    return coordinator_values.serialize_dataset_to_graph(dataset)


def deserialize_dataset(graph_def, element_spec):
    """Rebuilds a dataset from `serialize_dataset`'s graph."""
    return coordinator_values.deserialize_dataset_from_graph(
        graph_def, element_spec
    )

# (end of the DownpourParameterServerStrategy section)
