"""Tests of the single-host GossipStrategy against NumPy references."""

import os
from unittest import mock

import keras
import numpy as np
import numpy_reference  # tests/strategies/gossip/numpy_reference.py
import tensorflow as tf
from absl.testing import parameterized

import tf_decentral as tfd
from tf_decentral import topology as topo
from tf_decentral.strategies import _keras_hooks

N = 4
DEVICES = [f"/device:CPU:{i}" for i in range(N)]
BATCH = 64  # global batch; 16 per replica


def _data(num=256, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, dim)).astype("float32")
    y = (x @ rng.normal(size=(dim, 1)) + 0.3).astype("float32")
    return x, y


def _linear_model(strategy, make_optimizer):
    # Keras optimizers must be created under the strategy's scope.
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
        model.compile(optimizer=make_optimizer(), loss="mse")
    return model


def _copies(variable):
    """Per-replica copies of a Keras variable, stacked on axis 0."""
    return np.stack([c.numpy() for c in variable.value.values])


def _dpsgd_reference(topology, update, x, y, w0, b0, lr, steps):
    """NumPy D-PSGD / ATC on copies of a linear model; replica i takes the
    i-th contiguous quarter of each global batch, as tf.distribute shards."""
    n = topology.num_nodes
    w = np.repeat(w0[None], n, 0).astype(np.float64)
    b = np.repeat(b0[None], n, 0).astype(np.float64)
    for t in range(steps):
        xb, yb = x[t * BATCH : (t + 1) * BATCH], y[t * BATCH : (t + 1) * BATCH]
        shards = zip(np.split(xb, n), np.split(yb, n))
        grads = [
            numpy_reference.mse_grads(xs, ys, w[i], b[i])
            for i, (xs, ys) in enumerate(shards)
        ]
        w, b = numpy_reference.gossip_step(
            update, topology.weights(t), w, b, grads, lr
        )
    return w, b


class GossipMathTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(
        update=["dpsgd", "atc"],
        topology_name=["ring", "one_peer_exponential", "random_matching"],
        mix_implementation=["xla", "packed"],
    )
    def test_matches_numpy_reference(
        self, update, topology_name, mix_implementation
    ):
        topology = topo.get(topology_name, N)
        strategy = tfd.GossipStrategy(
            topology,
            DEVICES,
            update=update,
            mix_implementation=mix_implementation,
        )
        lr = 0.05
        model = _linear_model(strategy, lambda: keras.optimizers.SGD(lr))
        w0 = model.layers[0].kernel.numpy()
        b0 = model.layers[0].bias.numpy()
        x, y = _data()
        steps = 3
        model.fit(
            x[: steps * BATCH],
            y[: steps * BATCH],
            batch_size=BATCH,
            shuffle=False,
            verbose=0,
        )
        w_ref, b_ref = _dpsgd_reference(
            topology, update, x, y, w0, b0, lr, steps
        )
        self.assertAllClose(_copies(model.layers[0].kernel), w_ref, atol=1e-5)
        self.assertAllClose(_copies(model.layers[0].bias), b_ref, atol=1e-5)
        # The copies really differ: this is not synchronous SGD in disguise.
        self.assertGreater(
            np.ptp(_copies(model.layers[0].kernel), 0).max(), 1e-4
        )

    def test_complete_atc_momentum_equals_mirrored(self):
        x, y = _data(num=512)
        runs = []
        for strategy in (
            tfd.GossipStrategy("complete", DEVICES, update="atc"),
            tf.distribute.MirroredStrategy(DEVICES),
        ):
            model = _linear_model(
                strategy, lambda: keras.optimizers.SGD(0.02, momentum=0.9)
            )
            history = model.fit(
                x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0
            )
            runs.append((model.get_weights(), history.history["loss"]))
        (gossip_weights, gossip_loss), (mirror_weights, mirror_loss) = runs
        for g, m in zip(gossip_weights, mirror_weights):
            self.assertAllClose(g, m, atol=1e-5)
        self.assertAllClose(gossip_loss, mirror_loss, rtol=1e-5)

    @parameterized.named_parameters(
        ("ring4", "ring", 4), ("ring8", "ring", 8), ("exp8", "exponential", 8)
    )
    def test_lr_zero_contracts_at_spectral_rate(self, name, n):
        topology = topo.get(name, n)
        devices = [f"/device:CPU:{i}" for i in range(n)]
        strategy = tfd.GossipStrategy(topology, devices)
        model = _linear_model(strategy, lambda: keras.optimizers.SGD(0.0))
        rng = np.random.default_rng(3)
        for var in model.trainable_weights:
            for component in var.value.values:
                component.assign(rng.normal(size=var.shape).astype("float32"))
        mean_before = model.get_weights()
        d0 = strategy.consensus_distance(model)
        steps = 3
        x, y = _data(num=BATCH * steps)
        model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
        d1 = strategy.consensus_distance(model)
        sigma2 = 1.0 - topo.spectral_gap(topology)
        self.assertLessEqual(d1, d0 * sigma2 ** (2 * steps) * (1 + 1e-4))
        self.assertGreater(d1, 0.0)
        if (name, n) == ("ring", 4):
            # Every non-consensus eigenvalue of the 4-ring is +-1/3: the
            # squared distance shrinks by exactly 1/9 per round.
            self.assertAllClose(d1 / d0, (1 / 9) ** steps, rtol=1e-3)
        # Mixing with a doubly stochastic matrix keeps the average.
        for before, after in zip(mean_before, model.get_weights()):
            self.assertAllClose(before, after, atol=1e-5)

    def _fit_gossip(self):
        """Trains a gossip model; returns it, its strategy and the increase
        of every `_keras_hooks.hook_counts` entry during the run."""
        before = dict(_keras_hooks.hook_counts)
        strategy = tfd.GossipStrategy("ring", DEVICES)
        model = _linear_model(strategy, lambda: keras.optimizers.SGD(0.01))
        x, y = _data()
        model.fit(x, y, batch_size=BATCH, verbose=0)
        fired = {
            name: count - before.get(name, 0)
            for name, count in _keras_hooks.hook_counts.items()
        }
        return model, strategy, fired

    def test_hooks_fire(self):
        model, strategy, fired = self._fit_gossip()
        # The Keras-side patches ran for this fit (not for an earlier test).
        for name in ("reduce_gradients", "apply_gradients"):
            self.assertGreater(fired.get(name, 0), 0, name)
        counts = strategy.extended.hook_counts
        self.assertGreater(counts["create_variable"], 0)
        # Traced once per replica and once for the update of the step.
        self.assertGreaterEqual(counts["local_gradients"], N)
        self.assertGreaterEqual(counts["mix"], 1)
        # The default mix is the XLA one: one compiled sum per device.
        self.assertGreaterEqual(counts["xla_mix"], N)
        reads = counts["average_reads"]
        model.get_weights()
        self.assertGreater(counts["average_reads"], reads)

    def test_other_strategies_untouched_by_hooks(self):
        # First make sure the hooks are installed and live (else a Mirrored
        # run would leave the counts alone trivially)...
        _, _, fired = self._fit_gossip()
        self.assertGreater(fired.get("reduce_gradients", 0), 0)
        self.assertGreater(fired.get("apply_gradients", 0), 0)
        # ... then a MirroredStrategy fit must not fire any of them.
        before = dict(_keras_hooks.hook_counts)
        model = _linear_model(
            tf.distribute.MirroredStrategy(DEVICES),
            lambda: keras.optimizers.SGD(0.01),
        )
        x, y = _data(num=64)
        model.fit(x, y, batch_size=32, verbose=0)
        self.assertEqual(dict(_keras_hooks.hook_counts), before)


class GossipWeightsIOTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.strategy = tfd.GossipStrategy("ring", DEVICES)
        with self.strategy.scope():
            keras.utils.set_random_seed(2)
            self.model = keras.Sequential(
                [
                    keras.Input((8,)),
                    keras.layers.Dense(4, activation="relu"),
                    keras.layers.BatchNormalization(),
                    keras.layers.Dense(1),
                ]
            )
            self.model.compile(keras.optimizers.Adam(0.05), "mse")
        x, y = _data()
        self.model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
        self.x = x[:16]
        self.means = [np.mean(_copies(v), axis=0) for v in self.model.weights]
        spread = max(np.ptp(_copies(v), 0).max() for v in self.model.weights)
        self.assertGreater(spread, 1e-4)  # copies differ, so means matter

    def _plain_model(self):
        keras.utils.set_random_seed(5)
        model = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(4, activation="relu"),
                keras.layers.BatchNormalization(),
                keras.layers.Dense(1),
            ]
        )
        return model

    def _assert_weights_are_means(self, weights):
        self.assertLen(weights, len(self.means))
        for got, want in zip(weights, self.means):
            self.assertAllClose(got, want, atol=1e-6)

    def test_get_weights_is_average(self):
        self._assert_weights_are_means(self.model.get_weights())

    def test_keras_file_is_average(self):
        path = os.path.join(self.get_temp_dir(), "m.keras")
        self.model.save(path)
        self._assert_weights_are_means(
            keras.saving.load_model(path).get_weights()
        )

    def test_weights_h5_is_average(self):
        path = os.path.join(self.get_temp_dir(), "m.weights.h5")
        self.model.save_weights(path)
        plain = self._plain_model()
        plain.load_weights(path)
        self._assert_weights_are_means(plain.get_weights())

    def test_tf_checkpoint_is_average(self):
        prefix = os.path.join(self.get_temp_dir(), "ckpt")
        path = tf.train.Checkpoint(model=self.model).write(prefix)
        plain = self._plain_model()
        tf.train.Checkpoint(model=plain).read(path).expect_partial()
        self._assert_weights_are_means(plain.get_weights())

    def test_export_serves_average_model(self):
        path = os.path.join(self.get_temp_dir(), "exported")
        self.model.export(path, verbose=False)
        loaded = tf.saved_model.load(path)  # keep alive: it owns the variables
        served = loaded.serve(self.x).numpy()
        plain = self._plain_model()
        plain.set_weights(self.means)
        self.assertAllClose(served, plain.predict(self.x, verbose=0), atol=1e-5)

    def test_set_and_load_weights_set_every_copy(self):
        new = [np.full(w.shape, 0.5, w.dtype) for w in self.means]
        self.model.set_weights(new)
        for v in self.model.weights:
            self.assertAllClose(_copies(v), np.full((N, *v.shape), 0.5))
        path = os.path.join(self.get_temp_dir(), "w.weights.h5")
        plain = self._plain_model()
        plain.save_weights(path)
        self.model.load_weights(path)
        for v, w in zip(self.model.weights, plain.get_weights()):
            self.assertAllClose(_copies(v), np.repeat(w[None], N, 0))

    def test_average_weights_and_consensus_distance(self):
        copies = [_copies(v) for v in self.model.trainable_weights]
        expected = sum(((c - c.mean(0)) ** 2).sum() for c in copies) / N
        self.assertAllClose(
            self.strategy.consensus_distance(self.model), expected, rtol=1e-5
        )
        self.strategy.average_weights(self.model)
        self.assertEqual(self.strategy.consensus_distance(self.model), 0.0)
        for v, mean in zip(self.model.weights, self.means):
            self.assertAllClose(
                _copies(v), np.repeat(mean[None], N, 0), atol=1e-6
            )


class GossipValidationTest(tf.test.TestCase):
    def test_unknown_update(self):
        with self.assertRaisesRegex(ValueError, "`update` must be one of"):
            tfd.GossipStrategy("ring", DEVICES, update="sgd")

    def test_unknown_mix_implementation(self):
        with self.assertRaisesRegex(ValueError, "mix_implementation.*'fast'"):
            tfd.GossipStrategy("ring", DEVICES, mix_implementation="fast")

    def test_unknown_topology_name(self):
        with self.assertRaisesRegex(ValueError, "hypercube"):
            tfd.GossipStrategy("hypercube", DEVICES)

    def test_topology_size_mismatch(self):
        with self.assertRaisesRegex(ValueError, "num_nodes=4"):
            tfd.GossipStrategy(topo.ring(6), DEVICES)

    def test_matrix_not_doubly_stochastic(self):
        bad = np.full((N, N), 0.3)
        with self.assertRaisesRegex(ValueError, "doubly stochastic"):
            tfd.GossipStrategy(bad, DEVICES)

    def test_too_few_devices(self):
        with self.assertRaisesRegex(ValueError, "at least 2 devices"):
            tfd.GossipStrategy("ring", DEVICES[:1])

    def test_duplicate_devices(self):
        with self.assertRaisesRegex(ValueError, "distinct"):
            tfd.GossipStrategy("ring", [DEVICES[0], DEVICES[0]])

    def test_devices_wrong_type(self):
        with self.assertRaisesRegex(TypeError, "list of device names"):
            tfd.GossipStrategy("ring", "/device:CPU:0")

    def test_single_worker_tf_config_trains_on_local_devices(self):
        config = (
            '{"cluster": {"worker": ["localhost:1"]},'
            ' "task": {"type": "worker", "index": 0}}'
        )
        with mock.patch.dict(os.environ, {"TF_CONFIG": config}):
            strategy = tfd.GossipStrategy("ring", DEVICES)
        self.assertFalse(strategy.is_multi_worker)
        self.assertEqual(strategy.num_replicas_in_sync, N)

    def test_average_weights_rejects_foreign_variables(self):
        strategy = tfd.GossipStrategy("ring", DEVICES)
        plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        with self.assertRaisesRegex(ValueError, "strategy.scope"):
            strategy.average_weights(plain)

    def test_default_devices_are_the_logical_cpus(self):
        strategy = tfd.GossipStrategy("ring")
        self.assertEqual(
            strategy.num_replicas_in_sync,
            len(tf.config.list_logical_devices("CPU")),
        )


if __name__ == "__main__":
    tf.test.main()
