"""Keras callbacks for decentralized training."""

import keras


class ConsensusMonitor(keras.callbacks.Callback):
    """Puts the consensus distance of a gossip model into the Keras logs.

    The consensus distance `(1/n) sum_i ||x_i - x_bar||^2` says how far the
    replicas' copies are from their average. The callback adds
    `consensus_distance` to the batch logs every `every_n_steps` steps (the
    progress bar shows it) and to the epoch logs (`History`, TensorBoard and
    CSVLogger record it). List it before TensorBoard/CSVLogger in
    `callbacks=[...]` so they see the value.

    Args:
        every_n_steps: Compute it every this many training batches (it reads
            every copy of every parameter); 0 computes it only at epoch end.
        strategy: The strategy; defaults to `model.distribute_strategy`.
    """

    def __init__(self, every_n_steps: int = 50, strategy=None):
        super().__init__()
        if not isinstance(every_n_steps, int) or every_n_steps < 0:
            raise ValueError(
                "`every_n_steps` must be an integer >= 0. "
                f"Received: every_n_steps={every_n_steps!r}"
            )
        self.every_n_steps = every_n_steps
        self._strategy = strategy
        self._last = None

    def _distance(self):
        strategy = self._strategy or self.model.distribute_strategy
        if not hasattr(strategy, "consensus_distance"):
            raise ValueError(
                "ConsensusMonitor needs a decentralized strategy with "
                "`consensus_distance`. Received: "
                f"{type(strategy).__name__}."
            )
        return strategy.consensus_distance(self.model)

    def on_train_batch_end(self, batch, logs=None):
        if self.every_n_steps and (batch + 1) % self.every_n_steps == 0:
            self._last = self._distance()
        if logs is not None and self._last is not None:
            logs["consensus_distance"] = self._last

    def on_epoch_end(self, epoch, logs=None):
        self._last = self._distance()
        if logs is not None:
            logs["consensus_distance"] = self._last
