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

`Keras3CollectiveFixes` fixes both; `AllReduceStrategy` is MWMS with the
fixes, the baseline every benchmark compares with.
"""

import collections
import itertools

import tensorflow as tf

from tf_decentral._tf_private import collective_all_reduce_strategy
from tf_decentral._tf_private import collective_util
from tf_decentral._tf_private import distribute_lib
from tf_decentral._tf_private import nest
from tf_decentral._tf_private import values_lib


class Keras3ExtendedFixes:
    """Mixin for `CollectiveAllReduceExtended`: reduces nested structures."""

    def _reduce_to(self, reduce_op, value, destinations, options):
        if nest.is_nested(value):
            self.hook_counts["nested_reduce"] += 1
            return nest.map_structure(
                lambda v: super(Keras3ExtendedFixes, self)._reduce_to(
                    reduce_op, v, destinations, options
                ),
                value,
            )
        return super()._reduce_to(reduce_op, value, destinations, options)


class Keras3StrategyFixes:
    """Mixin for multi-worker strategies: `reduce(axis=0)` of scalars."""

    def reduce(self, reduce_op, value, axis):
        if axis is not None and _all_scalars(value):
            self.extended.hook_counts["scalar_reduce_axis"] += 1
            axis = None
        return super().reduce(reduce_op, value, axis)


def _all_scalars(value):
    components = []
    for v in nest.flatten(value):
        if isinstance(v, values_lib.DistributedValues):
            components.extend(v.values)
        else:
            components.append(v)
    return all(
        getattr(c, "shape", None) is not None and c.shape.rank == 0
        for c in components
    )


def make_communication_options(options=None, default_timeout=None):
    """Returns `options`, or default options with `default_timeout`."""
    if options is None:
        return collective_util.Options(timeout_seconds=default_timeout)
    if not isinstance(options, collective_util.Options):
        raise TypeError(
            "`communication_options` must be a "
            "`tf.distribute.experimental.CommunicationOptions`. "
            f"Received: {options!r}"
        )
    return options


class _AllReduceExtended(
    Keras3ExtendedFixes,
    collective_all_reduce_strategy.CollectiveAllReduceExtended,
):
    def __init__(self, container, cluster_resolver, options):
        self.hook_counts = collections.Counter()
        super().__init__(
            container,
            cluster_resolver=cluster_resolver,
            communication_options=options,
        )


class AllReduceStrategy(
    Keras3StrategyFixes,
    collective_all_reduce_strategy.CollectiveAllReduceStrategy,
):
    """Synchronous all-reduce SGD across the workers of a TF cluster.

    `tf.distribute.MultiWorkerMirroredStrategy` with the two fixes its `fit`
    needs under Keras 3 (see the module docstring). Every worker runs the same
    script; the cluster comes from `TF_CONFIG` (or `cluster_resolver`).
    Without a cluster it trains on this host's local device like MWMS does.

    Args:
        cluster_resolver: A `tf.distribute.cluster_resolver.ClusterResolver`;
            None reads `TF_CONFIG`.
        communication_options: A
            `tf.distribute.experimental.CommunicationOptions`. Set
            `timeout_seconds` so that a dead worker raises instead of hanging.
    """

    # Own collective group-key range per instance (stock strategies all start
    # at 0 and clash in one process when their device sets differ). Every
    # worker creates its strategies in the same order, so keys agree.
    _instances = itertools.count(1)

    def __init__(self, cluster_resolver=None, communication_options=None):
        self._collective_key_base = 2_000_000 + 1_000 * next(self._instances)
        if cluster_resolver is None:
            cluster_resolver = (
                tf.distribute.cluster_resolver.TFConfigClusterResolver()
            )
        options = make_communication_options(communication_options)
        distribute_lib.Strategy.__init__(
            self, _AllReduceExtended(self, cluster_resolver, options)
        )
