"""Downpour's push statistics (`stats.py`), without a cluster."""

import os
import tempfile
import types

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tf_decentral.strategies.downpour import stats

MAX_PUSHES = 4


def _result(closure, worker, stalenesses, fresh):
    """The applier's records of one closure's pushes (`Applier.drain`)."""
    return {
        "push_id": closure * MAX_PUSHES + np.arange(len(stalenesses)),
        "worker": np.full(len(stalenesses), worker, np.int64),
        "staleness": np.array(stalenesses, np.int64),
        "fresh": np.array(fresh, bool),
    }


class PushStatsTest(tf.test.TestCase, parameterized.TestCase):
    def test_records_every_push_and_counts_only_fresh_ones(self):
        push_stats = stats.PushStats()
        self.assertEqual(
            push_stats.record(_result(1, 0, [1, 2], [True, True]), MAX_PUSHES),
            2,
        )
        # A re-run closure: its pushes are duplicates (staleness 0).
        self.assertEqual(
            push_stats.record(
                _result(1, 1, [0, 0], [False, False]), MAX_PUSHES
            ),
            0,
        )
        self.assertEqual(push_stats.histogram(), {1: 1, 2: 1})
        self.assertEqual(
            push_stats.records(),
            [
                stats.PushRecord(1, 0, 0, 1, True),
                stats.PushRecord(1, 0, 1, 2, True),
                stats.PushRecord(1, 1, 0, 0, False),
                stats.PushRecord(1, 1, 1, 0, False),
            ],
        )

    def test_epoch_histogram_restarts_the_total_does_not(self):
        push_stats = stats.PushStats()
        push_stats.start_epoch()
        push_stats.record(_result(1, 0, [3, 1], [True, True]), MAX_PUSHES)
        self.assertEqual(
            push_stats.epoch_logs(), {"staleness": 2.0, "staleness_max": 3.0}
        )
        push_stats.start_epoch()
        self.assertEqual(push_stats.epoch_logs(), {})
        self.assertEqual(push_stats.histogram(current_epoch=True), {})
        push_stats.record(_result(2, 1, [2], [True]), MAX_PUSHES)
        self.assertEqual(push_stats.histogram(current_epoch=True), {2: 1})
        self.assertEqual(push_stats.histogram(), {1: 1, 2: 1, 3: 1})
        self.assertEqual(
            push_stats.epoch_logs(), {"staleness": 2.0, "staleness_max": 2.0}
        )

    def test_histogram_is_sorted_by_staleness(self):
        push_stats = stats.PushStats()
        push_stats.record(_result(1, 0, [5, 1, 3, 1], [True] * 4), MAX_PUSHES)
        self.assertEqual(list(push_stats.histogram()), [1, 3, 5])

    @parameterized.parameters(1, 3)
    def test_keeps_the_newest_records(self, max_records):
        push_stats = stats.PushStats(max_records=max_records)
        for closure in range(1, 6):
            push_stats.record(_result(closure, 0, [1], [True]), MAX_PUSHES)
        kept = [r.closure for r in push_stats.records()]
        self.assertEqual(kept, list(range(6 - max_records, 6)))
        self.assertEqual(push_stats.histogram(), {1: 5})


def _events(log_dir):
    """`[(tag, step, number of values)]` of the histogram events."""
    found = []
    for root, _, files in os.walk(log_dir):
        for name in files:
            path = os.path.join(root, name)
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    buckets = tf.make_ndarray(value.tensor)
                    found.append(
                        (value.tag, event.step, int(buckets[:, 2].sum()))
                    )
    return found


class _Strategy:
    """Stands for a Downpour strategy: only its public histogram."""

    def __init__(self):
        self.epoch = {}

    def staleness_histogram(self, *, current_epoch=False):
        if not current_epoch:
            raise AssertionError("StalenessHistogram must ask for the epoch")
        return self.epoch


class StalenessHistogramTest(tf.test.TestCase):
    def _callback(self, strategy):
        log_dir = tempfile.mkdtemp(dir=self.get_temp_dir())
        callback = stats.StalenessHistogram(log_dir)
        callback.set_model(types.SimpleNamespace(distribute_strategy=strategy))
        return callback, log_dir

    def test_writes_each_epochs_histogram(self):
        strategy = _Strategy()
        callback, log_dir = self._callback(strategy)
        strategy.epoch = {1: 3, 2: 1}
        callback.on_epoch_end(0)
        strategy.epoch = {}  # An epoch without pushes writes nothing.
        callback.on_epoch_end(1)
        strategy.epoch = {4: 2}
        callback.on_epoch_end(2)
        callback.on_train_end()
        self.assertTrue(os.path.isdir(os.path.join(log_dir, "train")))
        self.assertEqual(
            _events(log_dir), [("staleness", 0, 4), ("staleness", 2, 2)]
        )

    def test_does_nothing_under_another_strategy(self):
        callback, log_dir = self._callback(tf.distribute.get_strategy())
        callback.on_epoch_end(0)
        callback.on_train_end()
        self.assertEqual(os.listdir(log_dir), [])


if __name__ == "__main__":
    tf.test.main()
