"""`tf_decentral.callbacks.ConsensusMonitor`."""

import keras
import numpy as np
import tensorflow as tf

import tf_decentral as tfd


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


def _model():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(2, activation="softmax")]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss="sparse_categorical_crossentropy",
    )
    return model


class BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = []

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append(dict(logs or {}))


class ConsensusMonitorTest(tf.test.TestCase):
    def test_logs_the_distance_every_n_steps_and_each_epoch(self):
        strategy = tfd.GossipStrategy("ring", devices=["CPU:0", "CPU:1"])
        with strategy.scope():
            model = _model()
        batch_logs = BatchLogs()
        x, y = _data()
        history = model.fit(
            x,
            y,
            batch_size=8,
            epochs=2,
            verbose=0,
            callbacks=[
                tfd.callbacks.ConsensusMonitor(every_n_steps=3),
                batch_logs,
            ],
        )
        epoch_values = history.history["consensus_distance"]
        self.assertLen(epoch_values, 2)
        self.assertAllClose(
            epoch_values[-1], strategy.consensus_distance(model)
        )
        # 8 batches per epoch: nothing before the 3rd batch of the first
        # epoch, then the value of the last measurement.
        first_epoch = batch_logs.batches[:8]
        self.assertNotIn("consensus_distance", first_epoch[0])
        self.assertNotIn("consensus_distance", first_epoch[1])
        self.assertIn("consensus_distance", first_epoch[2])
        self.assertGreaterEqual(first_epoch[2]["consensus_distance"], 0.0)

    def test_every_n_steps_zero_measures_only_at_epoch_end(self):
        strategy = tfd.GossipStrategy("ring", devices=["CPU:0", "CPU:1"])
        with strategy.scope():
            model = _model()
        batch_logs = BatchLogs()
        x, y = _data(32)
        history = model.fit(
            x,
            y,
            batch_size=8,
            epochs=1,
            verbose=0,
            callbacks=[tfd.callbacks.ConsensusMonitor(0), batch_logs],
        )
        self.assertLen(history.history["consensus_distance"], 1)
        self.assertTrue(
            all("consensus_distance" not in b for b in batch_logs.batches)
        )

    def test_rejects_a_bad_interval(self):
        for bad in (-1, 2.5, "3"):
            with self.assertRaisesRegex(ValueError, "every_n_steps"):
                tfd.callbacks.ConsensusMonitor(bad)

    def test_needs_a_decentralized_strategy(self):
        strategy = tfd.strategies.get("mirrored", devices=["CPU:0", "CPU:1"])
        with strategy.scope():
            model = _model()
        x, y = _data(16)
        with self.assertRaisesRegex(ValueError, "MirroredStrategy"):
            model.fit(
                x,
                y,
                batch_size=8,
                epochs=1,
                verbose=0,
                callbacks=[tfd.callbacks.ConsensusMonitor(0)],
            )


if __name__ == "__main__":
    tf.test.main()
