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

`tf_decentral.strategies._collective` fixes both; `AllReduceStrategy` is MWMS
with the fixes, the baseline every benchmark compares with.
"""

import collections

import tensorflow as tf

from tf_decentral import _tf_private
from tf_decentral.strategies import _collective


class _AllReduceExtended(
    _collective.Keras3ExtendedFixes,
    _tf_private.CollectiveAllReduceExtended,
):
    def __init__(self, container, cluster_resolver, options):
        self.hook_counts = collections.Counter()
        super().__init__(
            container,
            cluster_resolver=cluster_resolver,
            communication_options=options,
        )


class AllReduceStrategy(
    _collective.Keras3StrategyFixes,
    tf.distribute.MultiWorkerMirroredStrategy,
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

    def __init__(self, cluster_resolver=None, communication_options=None):
        if cluster_resolver is None:
            cluster_resolver = (
                tf.distribute.cluster_resolver.TFConfigClusterResolver()
            )
        options = _collective.communication_options(communication_options)
        # Own collective key range per instance (see `_collective.key_base`).
        _tf_private.set_collective_key_base(
            self, _collective.key_base("allreduce")
        )
        # Past MultiWorkerMirroredStrategy's constructor, which would build
        # its own extended: straight to `tf.distribute.Strategy`'s.
        tf.distribute.Strategy.__init__(
            self, _AllReduceExtended(self, cluster_resolver, options)
        )
