"""Gossip variables: one copy per replica, copies that may differ.

`GossipVariable` is a mirrored variable whose copies are not kept equal: a
cross-replica read (and any read outside a strategy scope) returns the
average of the copies. `GossipVariableCreator` makes an extended create
them; `gossip_variables` collects and checks the variables a public method
(`consensus_distance`, `average_weights`) receives.
"""

import tensorflow as tf

from tf_decentral import _tf_private


class GossipVariable(_tf_private.MirroredVariable):
    """A mirrored variable whose per-replica copies may differ.

    Inside `strategy.run` each replica reads and writes its own copy. A
    cross-replica read, and any read outside a strategy scope, returns the
    average of the copies for floating-point variables (integer counters such
    as the optimizer's `iterations` are identical on every replica and return
    the first copy). Cross-replica assignment sets every copy.
    """

    @property
    def is_averaged(self) -> bool:
        """Whether a cross-replica read returns the average of the copies."""
        return (
            self.dtype.is_floating
            and self.aggregation != tf.VariableAggregation.ONLY_FIRST_REPLICA
        )

    def read_cross_replica(self):
        if not self.is_averaged:
            return super().read_cross_replica()
        extended = self.distribute_strategy.extended
        extended.hook_counts["average_reads"] += 1
        # No explicit device: a SavedModel traced through this read must not
        # pin ops to this cluster's devices (`/job:worker/...`).
        copies = self.values
        total = tf.math.add_n([v.read_value() for v in copies])
        return total / tf.cast(len(copies), self.dtype)

    def read_in_context(self):
        # Outside any strategy scope TF's default replica context reports
        # replica 0, so the stock read would return the first copy to
        # `np.array(var)`, checkpoints and Keras' .weights.h5 writer. Such a
        # read is a cross-replica read of the model: return the average.
        if (
            not tf.distribute.has_strategy()
            and _tf_private.update_replica_id() is None
        ):
            return self.read_cross_replica()
        return super().read_in_context()


class GossipVariableCreator:
    """Mixin for the gossip extended classes: creates `GossipVariable`s.

    Goes before a `_tf_private.GossipExtendedNames` subclass in the bases;
    the class sets `hook_counts`.
    """

    def create_variable(self, next_creator, **kwargs):
        """Creates a `GossipVariable` with one copy per local device."""
        self.hook_counts["create_variable"] += 1
        return _tf_private.create_mirrored_variable(
            self, next_creator, GossipVariable, **kwargs
        )


def gossip_variables(strategy, model_or_variables, trainable):
    """Returns the `GossipVariable`s of a model or a list of variables.

    Args:
        strategy: The `GossipStrategy` the variables must belong to.
        model_or_variables: A Keras model or a list of variables.
        trainable: Whether to take a model's trainable weights only (else
            all its weights).

    Raises:
        ValueError: If a variable was not created under `strategy`'s scope.
    """
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
        if v.distribute_strategy is not strategy:
            raise ValueError(
                f"Variable {v.name!r} belongs to another strategy. "
                "Received: a variable of a different GossipStrategy."
            )
        out.append(v)
    return out
