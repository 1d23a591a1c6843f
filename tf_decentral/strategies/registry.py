"""Maps strategy names (as used by flags) to strategy objects."""

import tensorflow as tf

from tf_decentral import _tf_private
from tf_decentral.strategies import _collective

NAMES = ("gossip", "async_gossip", "downpour", "allreduce", "mirrored")


class _MirroredStrategy(tf.distribute.MirroredStrategy):
    """`tf.distribute.MirroredStrategy` with its own collective key range.

    Every stock MirroredStrategy numbers its collective groups from 1, so two
    of them in one process (e.g. a run and its all-reduce comparison) clash:
    "joining a group with size 2, but that group has size 4", or "Shape
    mismatch in the collective instance". This one draws its own range.
    """

    def __init__(self, devices=None, cross_device_ops=None):
        _tf_private.set_collective_key_base(
            self, _collective.key_base("mirrored")
        )
        super().__init__(devices=devices, cross_device_ops=cross_device_ops)


def get(name: str, **options) -> tf.distribute.Strategy:
    """Returns a new strategy for `name`, built with `options`.

    Args:
        name: One of `NAMES`: `"gossip"` (`GossipStrategy`),
            `"async_gossip"` (`AsyncGossipStrategy`: AD-PSGD across the
            workers of a TF_CONFIG cluster), `"downpour"`
            (`DownpourParameterServerStrategy`: Downpour SGD and the
            parameter-server protocols, on the chief of a cluster with ps
            tasks; options `n_fetch`, `n_push`, `protocol`, `softsync_n`,
            `staleness_lr`, `warm_start_steps`), `"allreduce"`
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
    if name == "async_gossip":
        from tf_decentral.strategies.async_gossip import AsyncGossipStrategy

        return AsyncGossipStrategy(**options)
    if name == "downpour":
        from tf_decentral.strategies.downpour import (
            DownpourParameterServerStrategy,
        )

        return DownpourParameterServerStrategy(**options)
    if name == "allreduce":
        from tf_decentral.strategies.all_reduce import AllReduceStrategy

        return AllReduceStrategy(**options)
    if name == "mirrored":
        return _MirroredStrategy(**options)
    raise ValueError(
        f"Unknown strategy name. Expected one of {NAMES}. Received: {name!r}"
    )
