"""What the chief learns from Downpour's pushes: push statistics.

The applier (`applier.py`) answers every push with its staleness and
whether the ps accepted it, and leaves the same answer, with the push id
and the sending worker, in a queue on ps task 0. The chief drains that queue
in bulk (one call for everything applied since the last one), not closure by
closure: no round trip per closure, and a slow closure holds up nothing but
its own records. `PushStats` turns them into a `PushRecord` per push and the
staleness histogram over the strategy's life and over the current epoch
(whose mean and maximum go into the epoch logs). `StalenessHistogram`
writes each epoch's histogram for TensorBoard.
"""

import collections
import os

import keras
import numpy as np
import tensorflow as tf

# How many push records `PushStats` keeps (the newest).
MAX_RECORDS = 100_000

PushRecord = collections.namedtuple(
    "PushRecord", ["closure", "worker", "push", "staleness", "fresh"]
)
PushRecord.__doc__ = """One push, as the ps applied it.

Attributes:
    closure: The id of the closure that sent it (closures are numbered in
        scheduling order).
    worker: The index of the worker that sent it.
    push: The push's index within the closure.
    staleness: The push's staleness (0 for a duplicate).
    fresh: Whether the ps accepted it (False: a duplicate push of a re-run
        closure, dropped).
"""


class PushStats:
    """The push records and staleness counts of one strategy.

    Args:
        max_records: How many `PushRecord`s to keep (the newest).

    Example:
        >>> import numpy as np
        >>> stats = PushStats()
        >>> stats.start_epoch()
        >>> stats.record({
        ...     "push_id": np.array([14, 15]), "worker": np.array([1, 1]),
        ...     "staleness": np.array([1, 3]),
        ...     "fresh": np.array([True, True]),
        ... }, max_pushes=2)
        2
        >>> stats.histogram()
        {1: 1, 3: 1}
        >>> stats.epoch_logs()
        {'staleness': 2.0, 'staleness_max': 3.0}
        >>> stats.records()[1]
        PushRecord(closure=7, worker=1, push=1, staleness=3, fresh=True)
    """

    def __init__(self, max_records: int = MAX_RECORDS):
        self._histogram = collections.Counter()
        self._epoch_histogram = collections.Counter()
        self._records = collections.deque(maxlen=max_records)

    def start_epoch(self) -> None:
        """Starts counting a new epoch's staleness."""
        self._epoch_histogram = collections.Counter()

    def record(self, records, max_pushes: int) -> int:
        """Records applied pushes; returns how many of them were fresh.

        Args:
            records: The applier's records, in the order applied: NumPy
                arrays `push_id`, `worker`, `staleness` and `fresh`, one
                entry per push. Duplicates (not fresh) are recorded but not
                counted in the histograms.
            max_pushes: The spacing of push ids: push `k` of closure `c` has
                id `c * max_pushes + k`.
        """
        fresh_count = 0
        for push_id, worker, staleness, fresh in zip(
            records["push_id"].tolist(),
            records["worker"].tolist(),
            records["staleness"].tolist(),
            records["fresh"].tolist(),
        ):
            closure, push = divmod(int(push_id), max_pushes)
            self._records.append(
                PushRecord(closure, int(worker), push, int(staleness), fresh)
            )
            if fresh:
                fresh_count += 1
                self._histogram[int(staleness)] += 1
                self._epoch_histogram[int(staleness)] += 1
        return fresh_count

    def histogram(self, current_epoch: bool = False) -> dict[int, int]:
        """Returns `{staleness: pushes}`, sorted by staleness.

        Args:
            current_epoch: Count only the pushes of the current epoch (the
                one just ended, in `on_epoch_end`) instead of all.
        """
        counts = self._epoch_histogram if current_epoch else self._histogram
        return dict(sorted(counts.items()))

    def records(self) -> list:
        """Returns the kept `PushRecord`s, oldest first."""
        return list(self._records)

    def epoch_logs(self) -> dict:
        """Returns the epoch's mean and maximum staleness for the logs, or
        `{}` before its first push."""
        counts = self._epoch_histogram
        total = sum(counts.values())
        if not total:
            return {}
        mean = sum(s * c for s, c in counts.items()) / total
        return {"staleness": float(mean), "staleness_max": float(max(counts))}


class StalenessHistogram(keras.callbacks.Callback):
    """Writes each epoch's staleness histogram for TensorBoard.

    The epoch logs of a Downpour `fit` carry the mean and maximum staleness
    as scalars (which Keras' `TensorBoard` callback plots); this callback
    adds the whole distribution, as a `tf.summary.histogram` named
    `"staleness"` with the epoch as step, in `log_dir/train` (next to
    `keras.callbacks.TensorBoard(log_dir)`'s own events). It does nothing
    under a strategy without `staleness_histogram(current_epoch=True)`.

    Args:
        log_dir: The TensorBoard log directory.

    Example:
        >>> from tf_decentral.strategies import downpour
        >>> callbacks = [
        ...     keras.callbacks.TensorBoard("logs"),
        ...     downpour.StalenessHistogram("logs"),
        ... ]
        >>> callbacks[1].log_dir
        'logs'
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        histogram = getattr(
            self.model.distribute_strategy, "staleness_histogram", None
        )
        if not callable(histogram):
            return
        counts = histogram(current_epoch=True)
        if not counts:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, "train")
            )
        values = np.repeat(
            np.array(list(counts), np.float32), list(counts.values())
        )
        with self._writer.as_default():
            tf.summary.histogram("staleness", values, step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
