"""GossipStrategy: decentralized parallel SGD (D-PSGD).

Vocabulary. A *node* is one model copy: a local device (replica) on one host.
The *topology* is a doubly stochastic mixing matrix `W` (or a sequence `W_t`
for time-varying graphs) with `W[i, j]` the weight node `i` gives to node
`j`'s value. *Mixing* is one gossip round `x_i <- sum_j W[i, j] x_j`. The
*consensus distance* is `(1/n) sum_i ||x_i - x_bar||^2` over all trainable
parameters, where `x_bar` is the average of the `n` copies.

Every replica keeps its own copy of every variable (parameters, optimizer
slots, batch-normalization statistics). Gradients stay local: the global
gradient all-reduce of synchronous training is replaced by mixing with the
neighbours of the topology. Two update rules:

- `"dpsgd"` (Lian et al. 2017, Algorithm 1):
  `x_i <- sum_j W_ij x_j - lr * g_i(x_i)`, the gradient computed at the copy
  before mixing.
- `"atc"` (adapt-then-combine):
  `x_i <- sum_j W_ij (x_j - lr * g_j(x_j))`, every copy first takes its own
  optimizer step, then the results are mixed.

With a non-SGD optimizer "`- lr * g`" stands for the optimizer's update, with
the optimizer's slots (momentum, Adam moments) local to each replica.

Reading a variable outside `strategy.run` (`get_weights`, `model.save`,
`save_weights`, `tf.train.Checkpoint`, `model.export`) returns the average of
the copies; assigning one (`set_weights`, `load_weights`, checkpoint restore)
sets every copy.

The public class below only validates its arguments and chooses the
implementation: `single_host.SingleHostGossipExtended` (the devices of one
host, mixed by device copies) or `multi_worker.MultiWorkerGossipExtended`
(the workers of a cluster, mixed over the network). Both hold the state and
the mechanisms (mixing, consensus distance, averaging, consensus writes);
`variables.py` has the variable class, `update.py` the update rules.

References:
    Lian, Zhang, Zhang, Hsieh, Zhang, Liu. "Can Decentralized Algorithms
    Outperform Centralized Algorithms? A Case Study for Decentralized Parallel
    Stochastic Gradient Descent." NeurIPS 2017.
"""

import tensorflow as tf

from tf_decentral import _tf_private
from tf_decentral import topology as topology_lib
from tf_decentral.strategies import _collective
from tf_decentral.strategies import _keras_hooks
from tf_decentral.strategies.gossip import multi_worker
from tf_decentral.strategies.gossip import single_host
from tf_decentral.strategies.gossip.single_host import MIX_IMPLEMENTATIONS
from tf_decentral.strategies.gossip.update import UPDATE_RULES
from tf_decentral.strategies.gossip.variables import GossipVariable

__all__ = ("GossipStrategy", "GossipVariable")


class GossipStrategy(tf.distribute.Strategy):
    """Decentralized parallel SGD (D-PSGD) across the devices of one host.

    Every device keeps its own copy of the model. Each step, every replica
    computes a gradient on its own shard of the global batch with its own
    copy, and mixes its copy with its neighbours' through the topology's
    doubly stochastic matrix instead of all-reducing gradients. Drop it into
    unmodified Keras code:

    ```python
    strategy = tfd.GossipStrategy("ring")
    with strategy.scope():
        model = make_model()
        model.compile(optimizer="adam", loss=..., metrics=[...])
    model.fit(dataset, epochs=...)
    model.save("model.keras")  # the average of the copies
    ```

    `evaluate` and `predict` run every replica's own copy on its shard of
    the data, so `evaluate` reports the average over the local models; call
    `average_weights(model)` first to evaluate the averaged model.

    Args:
        topology: A topology name (see `tf_decentral.topology.NAMES`), a
            `tf_decentral.topology.Topology`, or a doubly stochastic matrix of
            shape `(n, n)` (or `(period, n, n)`), with one node per device.
        devices: Device names, one replica each. `None` means every GPU if
            there are at least two, else every logical CPU.
        update: `"dpsgd"` (mix, then apply the local gradient computed before
            mixing; Lian et al. 2017) or `"atc"` (apply the local update, then
            mix).
        mix_implementation: How the devices of one host mix. `"xla"` (the
            default on one host): one XLA-compiled weighted sum per device
            over the current round's neighbours. `"packed"`: no XLA; all
            variables packed into one buffer per replica, one `tensordot`
            per device. Both compute the same round (up to float rounding).
            Not used across the workers of a cluster, which exchange packed
            buffers over the network.

    Raises:
        ValueError: For fewer than 2 devices, an unknown `update`,
            `mix_implementation` or topology name, or a topology whose size
            is not the number of devices.

    __Known issues__: like `tf.distribute.MirroredStrategy`, it does not
    support Keras' `gradient_accumulation_steps` or `use_ema` with
    `ema_overwrite_frequency`. `BatchNormalization(synchronized=True)` still
    all-reduces its batch statistics across replicas.

    References:
        Lian et al. "Can Decentralized Algorithms Outperform Centralized
        Algorithms?" NeurIPS 2017.
    """

    # The single-host implementation. A subclass may name a subclass of it
    # (bench/single_host/mix_variants.py overrides its `mix_group`).
    _single_host_extended_class = single_host.SingleHostGossipExtended

    def __init__(
        self,
        topology="ring",
        devices=None,
        *,
        update="dpsgd",
        mix_implementation=None,
        cluster_resolver=None,
        communication_options=None,
    ):
        if update not in UPDATE_RULES:
            raise ValueError(
                f"`update` must be one of {UPDATE_RULES}. "
                f"Received: update={update!r}"
            )
        if (
            mix_implementation is not None
            and mix_implementation not in MIX_IMPLEMENTATIONS
        ):
            raise ValueError(
                "`mix_implementation` must be one of "
                f"{MIX_IMPLEMENTATIONS} or None. "
                f"Received: mix_implementation={mix_implementation!r}"
            )
        if cluster_resolver is None:
            cluster_resolver = multi_worker.resolver_from_env()
        _keras_hooks.install()
        # MirroredExtended.__init__ numbers its collective groups (used by
        # the metric reductions and any replica all-reduce) from this base.
        # Stock strategies all start at 0, so two of them with different
        # device sets in one process clash ("joining a group with size 2,
        # but that group has size 4"). Every GossipStrategy has its own.
        _tf_private.set_collective_key_base(
            self, _collective.key_base("gossip")
        )
        if cluster_resolver is not None:
            extended = _multi_worker_extended(
                self,
                topology,
                devices,
                update,
                mix_implementation,
                cluster_resolver,
                communication_options,
            )
        else:
            if communication_options is not None:
                raise ValueError(
                    "`communication_options` applies to gossip across the "
                    "workers of a cluster; on one host the replicas mix by "
                    "device copies. Received: communication_options="
                    f"{communication_options!r} and no cluster."
                )
            devices = single_host.resolve_devices(devices)
            extended = self._single_host_extended_class(
                self,
                devices,
                topology_lib.resolve(topology, len(devices)),
                update,
                mix_implementation or "xla",
            )
        super().__init__(extended)

    @property
    def is_multi_worker(self) -> bool:
        """Whether the gossip nodes are the workers of a cluster."""
        return isinstance(self.extended, multi_worker.MultiWorkerGossipExtended)

    @property
    def topology(self) -> topology_lib.Topology:
        """The `Topology` whose nodes are this strategy's replicas."""
        return self.extended.topology

    @property
    def update(self) -> str:
        """The update rule, `"dpsgd"` or `"atc"`."""
        return self.extended.update_rule

    def consensus_distance(self, model_or_variables) -> float:
        """Returns `(1/n) sum_i ||x_i - x_bar||^2` over trainable parameters.

        `x_i` is replica `i`'s copy of all trainable variables and `x_bar`
        their average; 0 means every copy is identical. Across workers it is
        a collective: every worker must call it.

        Args:
            model_or_variables: A Keras model (its trainable weights are
                used) or a list of variables created under this strategy.
        """
        return self.extended.consensus_distance(model_or_variables)

    def average_weights(self, model_or_variables) -> None:
        """Sets every copy of every model variable to the exact average.

        Averages trainable and non-trainable floating-point variables (e.g.
        batch-normalization statistics), not the optimizer's slots. Call it
        outside `strategy.run`, e.g. before evaluating the consensus model.
        Across workers it is a collective: every worker must call it.

        Args:
            model_or_variables: A Keras model or a list of variables created
                under this strategy.
        """
        self.extended.average_weights(model_or_variables)

    def save(self, model, filepath, **kwargs) -> bool:
        """Saves the consensus (averaged) model; returns whether it wrote.

        On one host this is `model.save(filepath, **kwargs)` (reads are
        averages already). Across workers every worker must call it: the
        model is averaged over all workers (a collective), the chief (or
        worker 0) writes `filepath`, and every worker then gets its own
        weights back, so training can continue undisturbed.

        Args:
            model: A Keras model built under this strategy.
            filepath: Where `model.save` writes (`.keras` or `.h5`).
            **kwargs: Passed to `model.save`.
        """
        return self.extended.consensus_write(
            model, lambda: model.save(filepath, **kwargs)
        )

    def export(self, model, filepath, **kwargs) -> bool:
        """`model.export` of the consensus model; see `save`."""
        return self.extended.consensus_write(
            model, lambda: model.export(filepath, **kwargs)
        )


def _multi_worker_extended(
    strategy,
    topology,
    devices,
    update,
    mix_implementation,
    cluster_resolver,
    communication_options,
):
    """Checks the arguments of a cluster; returns its extended."""
    if mix_implementation is not None:
        raise ValueError(
            "`mix_implementation` chooses how the devices of one "
            "host mix; the workers of a cluster exchange packed "
            "buffers over the network. Received: "
            f"mix_implementation={mix_implementation!r} and a "
            "cluster of workers."
        )
    if devices is not None:
        raise ValueError(
            "`devices` cannot be set with a cluster: each worker "
            "uses its own GPUs, or its CPU. Received: "
            f"devices={devices!r} and a cluster of workers."
        )
    options = _collective.communication_options(
        communication_options, multi_worker.DEFAULT_TIMEOUT_SECONDS
    )
    return multi_worker.MultiWorkerGossipExtended(
        strategy, cluster_resolver, options, topology, update
    )
