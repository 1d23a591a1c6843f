"""The Keras patches: every target exists, install is idempotent, and a
strategy that is not ours runs Keras unchanged.

That each hook fires under its strategy is asserted by that strategy's own
tests (gossip, async gossip, Downpour)."""

import keras
import numpy as np
import tensorflow as tf

import tf_decentral as tfd
from tf_decentral import _keras_private
from tf_decentral.strategies import _keras_hooks


class KerasHooksTest(tf.test.TestCase):
    def test_every_patch_target_exists_on_this_keras(self):
        self.assertEqual(_keras_hooks.missing_targets(), [])
        targets = {p.target for p in _keras_hooks.PATCHES}
        self.assertEqual(targets, set(_keras_private.PATCH_TARGETS))

    def test_a_missing_target_is_reported_and_nothing_is_patched(self):
        owner, method = _keras_private.PATCH_TARGETS["trainer_epoch_logs"]
        saved = _keras_private.PATCH_TARGETS["trainer_epoch_logs"]
        _keras_private.PATCH_TARGETS["trainer_epoch_logs"] = (owner, "gone")
        try:
            self.assertEqual(
                _keras_hooks.missing_targets(),
                [f"{owner.__name__}.gone"],
            )
        finally:
            _keras_private.PATCH_TARGETS["trainer_epoch_logs"] = saved
        self.assertTrue(callable(getattr(owner, method)))

    def test_install_is_idempotent(self):
        _keras_hooks.install()
        owner, method = _keras_private.PATCH_TARGETS["trainer_fit"]
        patched = getattr(owner, method)
        _keras_hooks.install()
        self.assertIs(getattr(owner, method), patched)

    def test_other_strategies_train_without_any_hook_firing(self):
        _keras_hooks.install()
        before = dict(_keras_hooks.hook_counts)
        strategy = tfd.strategies.get("mirrored", devices=["CPU:0", "CPU:1"])
        with strategy.scope():
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
            model.compile(optimizer="sgd", loss="mse")
        x = np.ones((8, 3), "float32")
        model.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0)
        self.assertEqual(dict(_keras_hooks.hook_counts), before)


if __name__ == "__main__":
    tf.test.main()
