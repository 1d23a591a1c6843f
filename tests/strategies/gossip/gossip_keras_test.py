"""GossipStrategy under the Keras features a user expects from `fit`."""

import glob
import os

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

import tf_decentral as tfd

N = 4
DEVICES = [f"/device:CPU:{i}" for i in range(N)]


def _images(num=256, seed=0):
    """A learnable image task: the label is the brightest quadrant."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(num, 12, 12, 1)).astype("float32")
    y = rng.integers(0, 4, size=num)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 6 * r : 6 * r + 6, 6 * c : 6 * c + 6] += 1.0
    return x, y


def _cnn():
    return keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(),
            keras.layers.Dropout(0.2),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )


def _optimizer(name):
    if name == "adamw_clip":
        return keras.optimizers.AdamW(
            1e-2, weight_decay=1e-3, global_clipnorm=1.0
        )
    if name == "sgd_momentum":
        return keras.optimizers.SGD(0.05, momentum=0.9)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(1e-3)
    return keras.optimizers.Adam(1e-2)


class GossipKerasFeaturesTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("adamw_clip", "adamw_clip", 1, False),
        ("sgd_momentum_spe4", "sgd_momentum", 4, False),
        ("rmsprop_eager", "rmsprop", 1, True),
    )
    def test_cnn_fit_evaluate_predict(self, optimizer, spe, eager):
        strategy = tfd.GossipStrategy("ring", DEVICES)
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = _cnn()
            model.compile(
                _optimizer(optimizer),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
                steps_per_execution=spe,
                run_eagerly=eager,
            )
        x, y = _images()
        history = model.fit(
            x, y, batch_size=32, epochs=3, validation_split=0.25, verbose=0
        )
        losses = history.history["loss"]
        self.assertLess(losses[-1], losses[0])
        self.assertIn("val_accuracy", history.history)
        loss, accuracy = model.evaluate(x, y, verbose=0)
        self.assertTrue(np.isfinite(loss))
        self.assertGreater(accuracy, 0.4)  # chance is 0.25
        self.assertEqual(model.predict(x[:10], verbose=0).shape, (10, 4))
        # Optimizer slots stay local: the replicas' slots differ.
        slots = [
            v
            for v in model.optimizer.variables
            if v.dtype == "float32" and len(v.shape) > 0
        ]
        spread = max(
            np.ptp(np.stack([c.numpy() for c in v.value.values]), 0).max()
            for v in slots
        )
        self.assertGreater(spread, 0.0)

    def test_callbacks(self):
        strategy = tfd.GossipStrategy("exponential", DEVICES)
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = _cnn()
            model.compile(
                keras.optimizers.Adam(1e-2),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
        x, y = _images()
        tmp = self.get_temp_dir()
        checkpoint = os.path.join(tmp, "best.keras")
        logdir = os.path.join(tmp, "tb")
        monitor = tfd.callbacks.ConsensusMonitor(every_n_steps=2)
        history = model.fit(
            x,
            y,
            batch_size=32,
            epochs=20,
            validation_split=0.25,
            verbose=0,
            callbacks=[
                monitor,
                keras.callbacks.ModelCheckpoint(
                    checkpoint, save_best_only=True
                ),
                keras.callbacks.EarlyStopping(
                    monitor="loss", min_delta=10.0, patience=1
                ),
                keras.callbacks.TensorBoard(logdir),
            ],
        )
        # EarlyStopping: no epoch improves the loss by 10, so it stops early.
        self.assertLen(history.history["loss"], 2)
        self.assertTrue(os.path.exists(checkpoint))
        restored = keras.saving.load_model(checkpoint)
        self.assertLen(restored.get_weights(), len(model.get_weights()))
        self.assertNotEmpty(
            glob.glob(os.path.join(logdir, "train", "*tfevents*"))
        )
        distances = history.history["consensus_distance"]
        self.assertLen(distances, 2)
        self.assertAllClose(
            distances[-1], strategy.consensus_distance(model), rtol=1e-6
        )
        self.assertGreater(distances[-1], 0.0)

    def test_backup_and_restore_resumes(self):
        x, y = _images()
        backup_dir = os.path.join(self.get_temp_dir(), "backup")

        class _Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 1:
                    raise KeyboardInterrupt("simulated preemption")

        def build():
            strategy = tfd.GossipStrategy("ring", DEVICES)
            with strategy.scope():
                keras.utils.set_random_seed(0)
                model = _cnn()
                model.compile(
                    keras.optimizers.SGD(0.05),
                    keras.losses.SparseCategoricalCrossentropy(
                        from_logits=True
                    ),
                )
            return model

        model = build()
        with self.assertRaises(KeyboardInterrupt):
            model.fit(
                x,
                y,
                batch_size=32,
                epochs=4,
                verbose=0,
                callbacks=[
                    keras.callbacks.BackupAndRestore(backup_dir),
                    _Interrupt(),
                ],
            )
        saved = model.get_weights()
        resumed = build()
        epochs_run = []

        class _Record(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                epochs_run.append(epoch)

            def on_train_begin(self, logs=None):
                for got, want in zip(self.model.get_weights(), saved):
                    np.testing.assert_allclose(got, want, atol=1e-6)

        resumed.fit(
            x,
            y,
            batch_size=32,
            epochs=4,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(backup_dir), _Record()],
        )
        self.assertEqual(epochs_run, [2, 3])


if __name__ == "__main__":
    tf.test.main()
