"""`checkpoint.TrainingState` in one process: a state published on a device
is taken whole by another model (the multi-process resume is in
`async_gossip_multiprocess_test.py`)."""

import keras
import numpy as np
import tensorflow as tf

from tf_decentral import _keras_private
from tf_decentral.strategies.async_gossip import checkpoint

DEVICE = "/job:localhost/replica:0/task:0/device:CPU:0"


def _model(units=4, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(units),
            keras.layers.Dropout(0.5, seed=seed),  # an int64 seed state
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    return model


def _state(model):
    variables = checkpoint.training_variables(model)
    return [np.asarray(v.numpy()) for v in variables]


class TrainingStateTest(tf.test.TestCase):
    def test_another_model_takes_weights_optimizer_and_epoch(self):
        source = _model(seed=1)
        x = np.ones((8, 3), "float32")
        source.fit(x, x[:, :1], epochs=2, verbose=0)  # slots, iterations
        _keras_private.set_initial_epoch(source, 2)
        checkpoint.TrainingState(source, DEVICE, "take").publish()
        target = _model(seed=2)  # optimizer not built yet
        self.assertFalse(target.optimizer.built)
        state = checkpoint.TrainingState(target, DEVICE, "take")
        state.wait_and_take(1.0, who="worker:1", owner="worker:0")
        dtypes = {d.name for d, _ in state.groups}
        self.assertEqual(dtypes, {"float32", "int64"})
        want, got = _state(source), _state(target)
        self.assertLen(got, len(want))
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)
        self.assertEqual(int(target.optimizer.iterations.numpy()), 2)
        self.assertEqual(_keras_private.initial_epoch(target), 2)

    def test_no_epoch_is_published_as_none(self):
        source = _model()
        checkpoint.TrainingState(source, DEVICE, "none").publish()
        target = _model()
        _keras_private.set_initial_epoch(target, 5)
        checkpoint.TrainingState(target, DEVICE, "none").take("w:1", "w:0")
        self.assertIsNone(_keras_private.initial_epoch(target))

    def test_another_model_size_is_a_clear_error(self):
        checkpoint.TrainingState(_model(units=4), DEVICE, "size").publish()
        state = checkpoint.TrainingState(_model(units=5), DEVICE, "size")
        with self.assertRaisesRegex(
            ValueError,
            r"build the same model and optimizer .* Received: worker:1 has "
            r"weights and optimizer variables of sizes \[\d+, \d+\] .*"
            r"worker:0 published \[\d+, \d+\]",
        ):
            state.take("worker:1", "worker:0")

    def test_a_state_never_published_times_out_clearly(self):
        state = checkpoint.TrainingState(_model(), DEVICE, "never")
        with self.assertRaisesRegex(
            RuntimeError,
            "worker:1 waited 0.1 s for worker:0 to restore its "
            "BackupAndRestore backup",
        ):
            state.wait_and_take(0.1, who="worker:1", owner="worker:0")


if __name__ == "__main__":
    tf.test.main()
