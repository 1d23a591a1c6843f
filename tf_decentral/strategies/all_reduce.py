"""AllReduceStrategy: synchronous all-reduce SGD across a TF cluster.

`tf.distribute.MultiWorkerMirroredStrategy` (MWMS) is TF's all-reduce SGD
across workers, but its `fit` is broken under Keras 3.15 by two bugs
(keras-team/keras#20585, tensorflow/tensorflow#72388):

1. Keras' first-batch build calls `strategy.reduce("MEAN", (x, y),
   axis=None)` on a nested structure, and `CollectiveAllReduceExtended.
   _reduce_to` does not map over structures ("Attempt to convert a value
   (PerReplica...)").
2. Keras reduces scalar step outputs with `strategy.reduce("MEAN", scalar,
   axis=0)`, which raises "Invalid reduction dimension 0 for input with 0
   dimensions".

`tf_decentral.strategies._collective` fixes both. Even fixed, MWMS under
`fit` launches one cross-worker collective per step for the gradients (all
of them batched) plus one per logged scalar (the loss and every metric),
each paying the all-reduce's latency rounds. `AllReduceStrategy` launches
one: Keras' step is traced in a context (`keras_step`) where the per-step
logs are reduced over this worker's replicas only, as multi-worker gossip
does. The epoch-end logs (History, callbacks' `on_epoch_end`, `evaluate`'s
return) are read from the metric variables across every worker, so they are
global. With `step_logs="global"` every step's logs are averaged over all
workers too, packed into a single extra collective. This is the all-reduce
baseline every benchmark compares with.
"""

import collections
import contextlib
import weakref

import tensorflow as tf

from tf_decentral import _tf_private
from tf_decentral.cluster import tf_config
from tf_decentral.ops import packing
from tf_decentral.strategies import _collective
from tf_decentral.strategies import _keras_hooks

DEFAULT_TIMEOUT_SECONDS = 120.0
"""Collective timeout when `communication_options` sets none."""

STEP_LOGS = ("local", "global")


class _AllReduceExtended(
    _collective.WatchedKerasStep,
    _keras_hooks.TrainFunctionHooks,
    _collective.Keras3ExtendedFixes,
    _tf_private.CollectiveAllReduceExtended,
):
    def __init__(self, container, cluster_resolver, options, step_logs):
        self.hook_counts = collections.Counter()
        self.step_logs = step_logs
        self.timeout_seconds = options.timeout_seconds
        self.resolver = cluster_resolver
        self._strategy_ref = weakref.ref(container)
        super().__init__(
            container,
            cluster_resolver=cluster_resolver,
            communication_options=options,
        )
        self.init_watched_step(
            self.timeout_seconds,
            f"the training step of {cluster_resolver.task_type}:"
            f"{cluster_resolver.task_id}",
        )

    @contextlib.contextmanager
    def keras_step_options(self):
        """In Keras' step, `Strategy.reduce` stays on this worker
        (`in_keras_step`) and the collectives traced have no per-op timeout
        (the step's watchdog times them out: TF's per-op timeout holds a
        thread per collective for the whole timeout, see
        `_collective.StepWatchdog`)."""
        # A 0 timeout overrides the default's in TF's merge (None would not).
        options = _tf_private.collective_options(self).merge(
            tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=_collective.NO_OP_TIMEOUT
            )
        )
        with _tf_private.collective_options_of(self, options):
            yield

    @property
    def is_multi_worker(self) -> bool:
        """Whether the cluster has more than one training task."""
        spec = self.resolver.cluster_spec().as_dict()
        return len(tf_config.training_tasks(spec)) > 1

    @property
    def is_chief(self) -> bool:
        """Whether this task is the chief (or worker 0 without a chief)."""
        spec = self.resolver.cluster_spec().as_dict()
        tasks = tf_config.training_tasks(spec)
        own = (self.resolver.task_type, self.resolver.task_id)
        return not tasks or own == tasks[0]

    def keras_checkpoint_writer(self) -> bool:
        return self.is_chief

    def keras_backup_restored(self, model):
        if self.is_multi_worker:
            _collective.broadcast_training_state(self._strategy_ref(), model)

    def explain_communication_error(self, error):
        own = (self.resolver.task_type, self.resolver.task_id)
        spec = self.resolver.cluster_spec().as_dict()
        return _collective.explain_lost_worker(
            error,
            cluster=spec,
            own=own,
            what=f"All-reduce training on {own[0]}:{own[1]}",
            timeout=self.timeout_seconds,
            # An all-reduce needs every other training task.
            peers=[t for t in tf_config.training_tasks(spec) if t != own],
        )


class AllReduceStrategy(
    _collective.Keras3StrategyFixes,
    tf.distribute.MultiWorkerMirroredStrategy,
):
    """Synchronous all-reduce SGD across the workers of a TF cluster.

    `tf.distribute.MultiWorkerMirroredStrategy` with the two fixes its `fit`
    needs under Keras 3, and one cross-worker collective per training step
    (see the module docstring). Every worker runs the same script; the
    cluster comes from `TF_CONFIG` (or `cluster_resolver`). Without a
    cluster it trains on this host's local device like MWMS does.

    Per-step logs (the progress bar, `on_train_batch_end`) are this worker's
    own by default; epoch-end logs are always global.

    Args:
        cluster_resolver: A `tf.distribute.cluster_resolver.ClusterResolver`;
            None reads `TF_CONFIG`.
        communication_options: A
            `tf.distribute.experimental.CommunicationOptions`. Its
            `timeout_seconds` (default 120; must be positive) is how long a
            training step of `fit` (outside `fit`: a collective) waits for a
            dead or stuck worker before raising an error that names it. In
            `fit` one watchdog thread per worker keeps it
            (`_collective.StepWatchdog`); TF's per-op timeout, used outside
            `fit`, holds a thread per collective op for that long.
        step_logs: `"local"` (default): each step's loss and metrics are
            this worker's; `"global"`: averaged over every worker, at the
            cost of one extra collective per step (all scalars packed).

    Raises:
        ValueError: For an unknown `step_logs`, a timeout that is not
            positive, or a malformed `TF_CONFIG` (the message says what is
            wrong).
    """

    def __init__(
        self,
        cluster_resolver=None,
        communication_options=None,
        *,
        step_logs="local",
    ):
        if step_logs not in STEP_LOGS:
            raise ValueError(
                f"`step_logs` must be one of {STEP_LOGS}. "
                f"Received: step_logs={step_logs!r}"
            )
        if cluster_resolver is None:
            tf_config.from_env()  # a ValueError saying what is wrong
            cluster_resolver = (
                tf.distribute.cluster_resolver.TFConfigClusterResolver()
            )
        options = _collective.communication_options(
            communication_options, DEFAULT_TIMEOUT_SECONDS
        )
        _keras_hooks.install()
        # Own collective key range per instance (see `_collective.key_base`).
        _tf_private.set_collective_key_base(
            self, _collective.key_base("allreduce")
        )
        # Past MultiWorkerMirroredStrategy's constructor, which would build
        # its own extended: straight to `tf.distribute.Strategy`'s.
        tf.distribute.Strategy.__init__(
            self,
            _AllReduceExtended(self, cluster_resolver, options, step_logs),
        )

    def reduce(self, reduce_op, value, axis):
        """`tf.distribute.Strategy.reduce`; in Keras' step, this worker's.

        Keras reduces every logged scalar of a step with `reduce("MEAN", v,
        axis=0)`; inside its step (see `keras_step`) that is the mean over
        this worker's replicas, as Keras does for one-host strategies.
        """
        if self.extended.in_keras_step:
            self.extended.hook_counts["local_step_logs"] += 1
            return tf.nest.map_structure(lambda v: _local_mean(self, v), value)
        return super().reduce(reduce_op, value, axis)

    def run(self, fn, args=(), kwargs=None, options=None):
        """`tf.distribute.Strategy.run`; with `step_logs="global"`, Keras'
        step returns logs averaged over all workers in one collective."""
        if self.extended.in_keras_step and self.extended.step_logs == "global":
            fn = _with_global_logs(fn, self.extended.hook_counts)
        return super().run(fn, args=args, kwargs=kwargs, options=options)


def _local_mean(strategy, value):
    if not isinstance(value, tf.distribute.DistributedValues):
        return value
    return tf.reduce_mean(strategy.experimental_local_results(value), axis=0)


def _with_global_logs(fn, hook_counts):
    """Returns `fn` whose float scalar outputs are averaged over replicas."""

    def fn_with_global_logs(*args, **kwargs):
        outputs = fn(*args, **kwargs)
        flat = tf.nest.flatten(outputs)
        scalars = [
            i
            for i, t in enumerate(flat)
            if isinstance(t, tf.Tensor)
            and t.shape.rank == 0
            and t.dtype.is_floating
        ]
        if not scalars:
            return outputs
        hook_counts["packed_step_logs"] += 1
        values = [tf.cast(flat[i], tf.float32) for i in scalars]
        packed = packing.pack([tf.reshape(v, [1]) for v in values])
        context = tf.distribute.get_replica_context()
        mean = context.all_reduce(tf.distribute.ReduceOp.MEAN, packed)
        for k, i in enumerate(scalars):
            flat[i] = tf.cast(mean[k], flat[i].dtype)
        return tf.nest.pack_sequence_as(outputs, flat)

    return fn_with_global_logs
