"""Tests for `spectral_gap` and `is_doubly_stochastic`."""

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral import topology


class SpectralGapTest(parameterized.TestCase):
    def test_matrix_and_topology_agree(self):
        for topo in (topology.ring(7), topology.exponential(6)):
            self.assertEqual(
                topology.spectral_gap(topo),
                topology.spectral_gap(topo.weights()),
            )
            self.assertEqual(
                topology.spectral_gap(topo),
                topology.spectral_gap(np.asarray(topo)),
            )

    def test_returns_python_float(self):
        self.assertIs(type(topology.spectral_gap(topology.ring(5))), float)
        self.assertIs(type(topology.ring(5).spectral_gap()), float)

    def test_single_node(self):
        self.assertEqual(topology.spectral_gap([[1.0]]), 1.0)

    def test_symmetric_equals_one_minus_second_eigenvalue(self):
        rng = np.random.default_rng(0)
        for n in range(2, 12):
            upper = np.triu(rng.random((n, n)) < 0.4, 1) | np.eye(
                n, k=1, dtype=bool
            )
            weights = topology.from_adjacency(upper | upper.T).weights()
            moduli = np.sort(np.abs(np.linalg.eigvalsh(weights)))
            self.assertAlmostEqual(
                topology.spectral_gap(weights), 1 - moduli[-2], places=10
            )

    def test_non_symmetric_uses_singular_values(self):
        # Doubly stochastic but not normal: the second singular value, not the
        # second eigenvalue modulus, bounds the per-round contraction.
        weights = np.array(
            [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]]
        ) @ np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.5, 0.5]])
        singular_values = np.linalg.svd(weights, compute_uv=False)
        self.assertAlmostEqual(
            topology.spectral_gap(weights), 1 - singular_values[1], places=12
        )

    def test_disconnected_is_zero(self):
        self.assertEqual(topology.spectral_gap(np.eye(4)), 0.0)
        swap = np.array([[0.0, 1.0], [1.0, 0.0]])
        self.assertEqual(topology.spectral_gap(swap), 0.0)

    def test_clamps_to_zero(self):
        # Not doubly stochastic: ||W - J|| > 1 would give a negative gap.
        self.assertEqual(topology.spectral_gap(2 * np.eye(3)), 0.0)

    def test_time_varying_is_per_round_gap_of_period_product(self):
        topo = topology.random_matching(8, seed=1, period=6)
        product = np.eye(8)
        for step in range(topo.period):
            product = topo.weights(step) @ product
        norm = np.linalg.norm(product - 1 / 8, 2)
        self.assertAlmostEqual(
            topology.spectral_gap(topo), 1 - norm ** (1 / 6), places=12
        )

    def test_consensus_distance_contracts_by_the_gap(self):
        # ||x_t - mean|| <= (1 - gap)^t ||x_0 - mean|| for a static topology.
        rng = np.random.default_rng(0)
        for topo in (topology.ring(9), topology.exponential(10)):
            x = rng.normal(size=topo.num_nodes)
            disagreement = np.linalg.norm(x - x.mean())
            rate = 1 - topo.spectral_gap()
            for step in range(1, 20):
                x = topo.weights() @ x
                self.assertLessEqual(
                    np.linalg.norm(x - x.mean()),
                    rate**step * disagreement + 1e-12,
                )

    @parameterized.named_parameters(
        ("vector", [1.0], r"`w` must be a non-empty square matrix"),
        ("not_square", np.ones((2, 3)) / 3, r"Received: w with shape \(2, 3\)"),
        ("stack", np.ones((2, 2, 2)) / 2, r"use `Topology\(w\).spectral_gap"),
        ("empty", np.zeros((0, 0)), r"shape \(0, 0\)"),
        ("nan", [[np.nan]], r"`w` must be finite"),
    )
    def test_rejects_bad_matrix(self, w, message):
        with self.assertRaisesRegex(ValueError, message):
            topology.spectral_gap(w)

    def test_rejects_non_numeric(self):
        with self.assertRaisesRegex(
            TypeError, r"`w` must be an array-like of real numbers"
        ):
            topology.spectral_gap("ring")


class IsDoublyStochasticTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("identity", np.eye(3)),
        ("complete", np.full((4, 4), 0.25)),
        ("stack", np.stack([np.eye(2), np.full((2, 2), 0.5)])),
        ("topology", topology.one_peer_exponential(5)),
        ("within_atol", np.eye(2) + 1e-8),
        ("list", [[1]]),
    )
    def test_true(self, w):
        self.assertIs(topology.is_doubly_stochastic(w), True)

    @parameterized.named_parameters(
        ("row_stochastic_only", [[0.5, 0.5], [0.0, 1.0]]),
        ("column_stochastic_only", [[0.5, 0.0], [0.5, 1.0]]),
        ("negative", [[1.5, -0.5], [-0.5, 1.5]]),
        ("not_square", np.full((2, 3), 1 / 3)),
        ("vector", [1.0]),
        ("empty", np.zeros((0, 0))),
        ("nan", [[np.nan]]),
        ("strings", [["a"]]),
        ("outside_atol", np.eye(2) + 1e-5),
    )
    def test_false(self, w):
        self.assertIs(topology.is_doubly_stochastic(w), False)

    def test_atol(self):
        w = np.eye(2) + 1e-5
        self.assertTrue(topology.is_doubly_stochastic(w, atol=1e-4))

    def test_rejects_bad_atol(self):
        with self.assertRaisesRegex(
            ValueError,
            r"`atol` must be a finite number >= 0. Received: atol=-1",
        ):
            topology.is_doubly_stochastic(np.eye(2), atol=-1)


if __name__ == "__main__":
    absltest.main()
