"""AsyncGossipStrategy's input path iterates without a MultiDeviceIterator.

TF 2.21's `MultiDeviceIterator` frees its source dataset before it stops its
prefetch thread; when Keras drops a partly read iterator at the start of
`fit` or `evaluate` (`EpochIterator.reset`) that thread can read the freed
dataset: a SIGSEGV seen in 2 of 5 runs of the multi-process test file under
load, and in 9 of 20 runs of a stress test of repeated `fit` + `evaluate`
(0 of 20 with the plain iterator). `_tf_private.OneDeviceExtended`, the
base of `AsyncGossipExtended`, defaults its input options so that TF builds
a plain iterator on the one input device.
"""

import tensorflow as tf

from tf_decentral import _tf_private


class _Extended(_tf_private.OneDeviceExtended):
    def dataset_input_contexts(self):
        return [tf.distribute.InputContext(1, 0, 1)]


class _Strategy(tf.distribute.Strategy):
    def __init__(self):
        super().__init__(_Extended(self, "/cpu:0"))


def _tf_iterator(distributed_dataset):
    """The tf.data iterator under a distributed dataset's iterator, and its
    first element."""
    iterator = iter(distributed_dataset)
    first = next(iterator)
    return type(iterator._iterators[0]._iterator).__name__, first


class InputIteratorTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.dataset = tf.data.Dataset.range(10).batch(2)

    def test_stock_one_device_strategy_uses_a_multi_device_iterator(self):
        # What the override avoids (if TF changes this, the override may be
        # unnecessary: re-check the crash).
        stock = tf.distribute.OneDeviceStrategy("/cpu:0")
        kind, _ = _tf_iterator(
            stock.experimental_distribute_dataset(self.dataset)
        )
        self.assertEqual(kind, "OwnedMultiDeviceIterator")

    def test_both_input_apis_give_a_plain_iterator(self):
        strategy = _Strategy()
        for distributed in (
            strategy.experimental_distribute_dataset(self.dataset),
            strategy.distribute_datasets_from_function(
                lambda context: self.dataset
            ),
        ):
            kind, first = _tf_iterator(distributed)
            self.assertEqual(kind, "OwnedIterator")
            self.assertAllEqual(first, [0, 1])

    def test_options_the_user_gives_are_kept(self):
        options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
        strategy = _Strategy()
        kind, _ = _tf_iterator(
            strategy.experimental_distribute_dataset(self.dataset, options)
        )
        self.assertEqual(kind, "OwnedMultiDeviceIterator")


if __name__ == "__main__":
    tf.test.main()
