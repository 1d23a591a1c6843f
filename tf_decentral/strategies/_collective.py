"""What every strategy that talks to other tasks shares.

* `COMMUNICATION_ERRORS`: the TensorFlow errors that mean "a peer or the
  network failed", as opposed to a bug in the model. Strategies catch these
  (and only these) to explain a lost peer, drop it, or retry elsewhere.
* `communication_options`: validates a user's
  `tf.distribute.experimental.CommunicationOptions` or builds the default.
* One allocator of collective keys (`key_base`, and the ranges of the
  neighbour exchange): TensorFlow matches collective ops across tasks by
  group and instance keys, and every stock strategy numbers its groups from
  1, so two strategies in one process (a run and its all-reduce comparison)
  clash unless each draws its own range. Every range is defined here.
* `Keras3ExtendedFixes` / `Keras3StrategyFixes`: the two fixes that
  `MultiWorkerMirroredStrategy`-based strategies need under Keras 3's `fit`.
"""

import itertools

import tensorflow as tf

from tf_decentral import _tf_private

COMMUNICATION_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
    tf.errors.InternalError,
)
"""Errors of a lost peer or network: raised by collectives and remote ops."""

PEER_STATE_LOST_ERRORS = COMMUNICATION_ERRORS + (
    tf.errors.NotFoundError,
    tf.errors.FailedPreconditionError,
)
"""`COMMUNICATION_ERRORS`, plus what a restarted peer's server raises for
state it no longer has (a resource that is gone, an uninitialized variable).
"""

REMOTE_FUNCTION_ERRORS = COMMUNICATION_ERRORS + (tf.errors.UnknownError,)
"""`COMMUNICATION_ERRORS`, plus the `UnknownError` a
`ClusterCoordinator` raises when a remote closure's task went away."""

# Collective key ranges. A strategy's own collectives (metric and variable
# reductions) take `group_key_start = 1 + key base`, with about a thousand
# groups per instance; the neighbour exchange of multi-worker gossip keys its
# two-member groups and transfers far above every strategy's range.
_STRATEGY_KEY_BASES = {
    "gossip": 1_000_000,
    "allreduce": 2_000_000,
    "mirrored": 3_000_000,
}
_KEYS_PER_INSTANCE = 1_000
NEIGHBOR_GROUP_KEY_BASE = 20_000_000
NEIGHBOR_INSTANCE_KEY_BASE = 30_000_000

_instance_counters = {kind: itertools.count(1) for kind in _STRATEGY_KEY_BASES}


def key_base(kind: str) -> int:
    """Returns the collective key base of a new strategy of `kind`.

    Every worker creates its strategies in the same order, so the n-th
    strategy of a kind gets the same keys on every worker.

    Args:
        kind: `"gossip"`, `"allreduce"` or `"mirrored"`.

    Raises:
        ValueError: For another `kind`.
    """
    if kind not in _STRATEGY_KEY_BASES:
        raise ValueError(
            f"`kind` must be one of {sorted(_STRATEGY_KEY_BASES)}. "
            f"Received: kind={kind!r}"
        )
    return _STRATEGY_KEY_BASES[kind] + _KEYS_PER_INSTANCE * next(
        _instance_counters[kind]
    )


_OPTIONS_TYPE = type(tf.distribute.experimental.CommunicationOptions())


def communication_options(options=None, default_timeout=None):
    """Returns `options`, or default options with `default_timeout`.

    Args:
        options: A `tf.distribute.experimental.CommunicationOptions` or None.
        default_timeout: Seconds of the default options' collective timeout.

    Raises:
        TypeError: If `options` is neither None nor `CommunicationOptions`.
    """
    if options is None:
        return tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=default_timeout
        )
    # `CommunicationOptions(...)` returns an instance of another class (TF's
    # exported name is a factory), so compare with the type it returns.
    if not isinstance(options, _OPTIONS_TYPE):
        raise TypeError(
            "`communication_options` must be a "
            "`tf.distribute.experimental.CommunicationOptions`. "
            f"Received: {options!r}"
        )
    return options


class Keras3ExtendedFixes:
    """Mixin for `CollectiveAllReduceExtended`: reduces nested structures.

    Keras' first-batch build calls `strategy.reduce("MEAN", (x, y),
    axis=None)` on a nested structure, which TF's collective `reduce_to`
    does not map over ("Attempt to convert a value (PerReplica...)").
    """

    def reduce_values(self, reduce_op, value, destinations, options):
        if tf.nest.is_nested(value):
            self.hook_counts["nested_reduce"] += 1
            return tf.nest.map_structure(
                lambda v: self.reduce_one(reduce_op, v, destinations, options),
                value,
            )
        return self.reduce_one(reduce_op, value, destinations, options)

    def reduce_one(self, reduce_op, value, destinations, options):
        """Reduces one (non-nested) value as TF's collective extended does."""
        return _tf_private.collective_reduce_to(
            self, reduce_op, value, destinations, options
        )


class Keras3StrategyFixes:
    """Mixin for multi-worker strategies: `reduce(axis=0)` of scalars.

    Keras reduces scalar step outputs with `strategy.reduce("MEAN", scalar,
    axis=0)`, which TF rejects ("Invalid reduction dimension 0 for input
    with 0 dimensions").
    """

    def reduce(self, reduce_op, value, axis):
        if axis is not None and _all_scalars(value):
            self.extended.hook_counts["scalar_reduce_axis"] += 1
            axis = None
        return super().reduce(reduce_op, value, axis)


def _all_scalars(value):
    components = []
    for v in tf.nest.flatten(value):
        if isinstance(v, tf.distribute.DistributedValues):
            components.extend(v.values)
        else:
            components.append(v)
    return all(
        getattr(c, "shape", None) is not None and c.shape.rank == 0
        for c in components
    )
