"""Where Downpour variables live: whole variables by size, big ones in rows.

TensorFlow's `ParameterServerStrategy` places variables round-robin over the
ps tasks and can shard them with a `variable_partitioner`, but Keras 3 cannot
train such sharded variables (its optimizer and gradient tape need one
resource handle per variable). Downpour never takes a gradient with respect
to a model variable (workers differentiate fetched tensors) and builds the
optimizer on the shards themselves, so here:

* a variable of at most `max_shard_bytes` goes whole to the ps task holding
  the fewest bytes so far (greedy, in creation order);
* a larger variable is split along its first axis into
  `ceil(bytes / max_shard_bytes)` row shards (at most one per ps task and
  per row), each on the least-loaded ps task; the model sees one
  `RowShardedVariable` whose value is the rows concatenated;
* a variable created with `colocate_with` (the optimizer's slots, built on
  the shards) goes beside its reference.
"""

import collections
import math

import numpy as np
import tensorflow as tf

from tf_decentral import _tf_private

_PS_DEVICE = "/job:ps/replica:0/task:{}/device:CPU:0"


class RowShardedVariable(_tf_private.ShardedVariable):
    """A variable stored as row shards on several parameter servers.

    Reading it concatenates the shards; assigning it splits the value. It is
    TensorFlow's `ShardedVariable` with the NumPy conversion Keras needs to
    save it (`np.asarray(variable)`).
    """

    def __array__(self, dtype=None, copy=None):
        del copy
        return np.asarray(self.numpy(), dtype=dtype)


def ps_device(task: int) -> str:
    """Returns the device name of ps task `task`."""
    return _PS_DEVICE.format(task)


def device_of(variable) -> str:
    """Returns the device of a Keras or TensorFlow variable."""
    value = getattr(variable, "value", None)
    if value is not None and not callable(value):
        variable = value
    return variable.device


def shards_of(variable) -> list:
    """Returns the row shards of `variable`, or `[variable]` if it is whole.

    Args:
        variable: A Keras variable (or a TensorFlow variable).
    """
    value = getattr(variable, "value", None)
    if isinstance(value, _tf_private.ShardedVariable):
        return list(value.variables)
    return [variable]


def _num_bytes(shape, dtype) -> int:
    shape = tf.TensorShape(shape)
    if not shape.is_fully_defined():
        return 0
    return int(shape.num_elements()) * tf.as_dtype(dtype).size


class PlacementExtended(_tf_private.ParameterServerExtendedBase):
    """`ParameterServerStrategy`'s implementation with Downpour placement.

    Attributes:
        max_shard_bytes: Variables larger than this are row-sharded; None
            never shards.
        ps_bytes: Bytes of the variables placed on each ps task so far.
        hook_counts: How often each placement path ran (for tests).
    """

    def __init__(self, container_strategy, cluster_resolver, max_shard_bytes):
        # `partition` is the variable partitioner: the base class shards a
        # variable for which it returns more than one partition and calls
        # `place_variable` (our least-loaded placement) for each shard or
        # whole variable. `evaluate`, `predict` and `save` run on the chief,
        # outside `ClusterCoordinator.schedule`, by design: no warnings.
        super().__init__(
            container_strategy,
            cluster_resolver,
            variable_partitioner=self.partition,
            allow_run_without_coordinator=True,
        )
        self.max_shard_bytes = max_shard_bytes
        self.ps_bytes = [0] * self.num_ps
        self.hook_counts = collections.Counter()

    def partition(self, shape, dtype) -> list:
        """Returns how many row shards a variable gets (per axis)."""
        rank = shape.rank
        num_bytes = _num_bytes(shape, dtype)
        limit = self.max_shard_bytes
        if limit is None or self.num_ps < 2 or num_bytes <= limit:
            return [1] * rank
        shards = min(self.num_ps, int(shape[0]), math.ceil(num_bytes / limit))
        return [max(shards, 1)] + [1] * (rank - 1)

    def create_variable(self, next_creator, **kwargs):
        colocate_with = kwargs.get("colocate_with")
        if isinstance(colocate_with, _tf_private.ShardedVariable):
            raise ValueError(
                "A variable cannot be colocated with the row-sharded variable "
                f"{colocate_with.name!r}. Create the optimizer inside "
                "`strategy.scope()` so that it is built on the shards."
            )
        variable = super().create_variable(next_creator, **kwargs)
        if isinstance(
            variable, _tf_private.ShardedVariable
        ) and not isinstance(variable, RowShardedVariable):
            self.hook_counts["row_sharded"] += 1
            variable = RowShardedVariable(variable.variables)
        return variable

    def place_variable(self, next_creator, **kwargs):
        """Creates a whole variable or shard on the least-loaded ps task."""
        task = int(np.argmin(self.ps_bytes))
        # Clear the colocation scope, as the base class does.
        with _tf_private.clear_colocation():
            with tf.device(ps_device(task)):
                variable = next_creator(**kwargs)
        self.ps_bytes[task] += _num_bytes(variable.shape, variable.dtype)
        self.hook_counts["placed"] += 1
        return variable
