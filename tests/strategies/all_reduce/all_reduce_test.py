"""AllReduceStrategy in one process (no cluster): the Keras 3 fixes.

The multi-worker equivalence with MirroredStrategy runs in
`all_reduce_multiprocess_test.py`.
"""

import os
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

import tf_decentral as tfd
from tf_decentral import _tf_private


def _model():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="softmax")]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class AllReduceStrategyTest(tf.test.TestCase):
    def test_fit_without_a_cluster(self):
        strategy = tfd.AllReduceStrategy()
        x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
        y = (x[:, 0] > 0).astype("int32")
        with strategy.scope():
            model = _model()
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        self.assertLen(history.history["loss"], 2)
        self.assertLess(history.history["loss"][1], history.history["loss"][0])

    def test_reduce_of_a_nested_structure(self):
        # Keras' first-batch build reduces an (x, y) structure; TF's
        # collective extended cannot (keras#20585).
        strategy = tfd.AllReduceStrategy()
        values = strategy.run(lambda: (tf.constant(1.0), tf.constant([2.0])))
        first, second = strategy.reduce("MEAN", values, axis=None)
        self.assertAllClose(first, 1.0)
        self.assertAllClose(second, [2.0])
        self.assertEqual(strategy.extended.hook_counts["nested_reduce"], 1)

    def test_reduce_of_a_scalar_along_axis_0(self):
        # Keras reduces scalar step outputs with axis=0, which TF rejects
        # ("Invalid reduction dimension 0", tensorflow#72388).
        strategy = tfd.AllReduceStrategy()
        value = strategy.run(lambda: tf.constant(3.0))
        self.assertAllClose(strategy.reduce("MEAN", value, axis=0), 3.0)
        self.assertEqual(
            strategy.extended.hook_counts["scalar_reduce_axis"], 1
        )

    def test_a_malformed_tf_config_is_explained(self):
        config = (
            '{"cluster": {"wrker": ["localhost:2222"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
        with mock.patch.dict(os.environ, {"TF_CONFIG": config}):
            with self.assertRaisesRegex(ValueError, 'Did you mean "worker"'):
                tfd.AllReduceStrategy()

    def test_timeouts_must_be_positive(self):
        for timeout in (0, -1):
            options = tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=timeout
            )
            with self.assertRaisesRegex(ValueError, "must be a positive"):
                tfd.AllReduceStrategy(communication_options=options)

    def test_the_default_timeout_is_finite(self):
        strategy = tfd.AllReduceStrategy()
        self.assertEqual(strategy.extended.timeout_seconds, 120.0)

    def test_communication_options_must_be_communication_options(self):
        with self.assertRaisesRegex(TypeError, "CommunicationOptions"):
            tfd.AllReduceStrategy(communication_options={"timeout": 3})

    def test_instances_draw_distinct_collective_key_ranges(self):
        # Two strategies in one process (a run and its comparison) must not
        # share collective groups; each reduces its own value correctly.
        first = tfd.AllReduceStrategy()
        second = tfd.AllReduceStrategy()
        for strategy, value in ((first, 2.0), (second, 5.0)):
            total = strategy.reduce(
                tf.distribute.ReduceOp.SUM,
                strategy.run(lambda v=value: tf.constant(v)),
                axis=None,
            )
            self.assertAllClose(
                total, value * strategy.num_replicas_in_sync
            )


if __name__ == "__main__":
    tf.test.main()

    def test_instance_keys_defer_past_a_nested_function_in_control_flow(
        self,
    ):
        # Where a collective traced in the current graph has its instance
        # key deferred to: TF's choice (None) except in a nested function
        # called inside control flow, which Keras' steps_per_execution
        # loop is (see _tf_private.defer_instance_keys_past_nested_functions).
        seen = {}

        def record(where):
            graph = tf.compat.v1.get_default_graph()
            seen[where] = _tf_private._function_holding_control_flow(graph)

        @tf.function
        def inner(x, where):
            record(where)
            return x + 1

        @tf.function
        def outer(x):
            record("outer")
            y = inner(x, "called directly")

            def in_cond():
                record("outer's own cond")
                return inner(y, "called in a cond")

            y = tf.cond(x > 0, in_cond, lambda: y)
            return tf.while_loop(
                lambda i, v: i < 2,
                lambda i, v: (i + 1, inner(v, "called in a loop")),
                (0, y),
            )[1]

        outer(tf.constant(1.0))
        self.assertIsNone(seen["outer"])
        self.assertIsNone(seen["called directly"])
        self.assertIsNone(seen["outer's own cond"])
        for where in ("called in a cond", "called in a loop"):
            self.assertIsNotNone(seen[where], where)
            self.assertStartsWith(seen[where].name, "outer")
