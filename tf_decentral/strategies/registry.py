"""Maps strategy names (as used by flags) to strategy objects."""

import tensorflow as tf

NAMES = ("gossip", "allreduce", "mirrored")


def get(name: str, **options) -> tf.distribute.Strategy:
    """Returns a new strategy for `name`, built with `options`.

    Args:
        name: One of `NAMES`: `"gossip"` (`GossipStrategy`), `"allreduce"`
            (`AllReduceStrategy`: all-reduce SGD across the workers of a
            TF_CONFIG cluster) or `"mirrored"` (`tf.distribute.
            MirroredStrategy`, the single-host all-reduce baseline; accepts
            `devices`).
        **options: Keyword arguments of the strategy's constructor.

    Raises:
        ValueError: If `name` is unknown.

    Example:
        >>> import tf_decentral as tfd
        >>> _ = tfd.testing.logical_cpus(2)
        >>> strategy = tfd.strategies.get("gossip", topology="ring")
        >>> strategy.num_replicas_in_sync >= 2
        True
    """
    if name == "gossip":
        from tf_decentral.strategies.gossip import GossipStrategy

        return GossipStrategy(**options)
    if name == "allreduce":
        from tf_decentral.strategies.all_reduce import AllReduceStrategy

        return AllReduceStrategy(**options)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(**options)
    raise ValueError(
        f"Unknown strategy name. Expected one of {NAMES}. Received: {name!r}"
    )
