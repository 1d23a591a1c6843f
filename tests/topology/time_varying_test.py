"""Tests for the time-varying topologies."""

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral import topology
from tf_decentral.topology import _linalg

_SIZES = (*range(1, 18), 31, 32, 64, 100)


class OnePeerExponentialTest(parameterized.TestCase):
    def test_doubly_stochastic(self):
        for n in _SIZES:
            topo = topology.one_peer_exponential(n)
            self.assertEqual(topo.num_nodes, n)
            self.assertEqual(topo.period, max(1, int(np.ceil(np.log2(n)))))
            self.assertTrue(topology.is_doubly_stochastic(topo))
            self.assertEqual(topo.name, "one_peer_exponential")
            if n > 1:
                self.assertEqual(topo.max_degree, 1)

    def test_one_peer_per_round(self):
        topo = topology.one_peer_exponential(16)
        for step in range(topo.period):
            for i in range(16):
                self.assertEqual(topo.neighbors(i, step), ((i + 2**step) % 16,))
                self.assertEqual(
                    topo.out_neighbors(i, step), ((i - 2**step) % 16,)
                )

    def test_single_node(self):
        topo = topology.one_peer_exponential(1)
        self.assertEqual(topo.period, 1)
        np.testing.assert_array_equal(topo.weights(), [[1.0]])

    @parameterized.parameters(1, 2, 4, 8, 16, 32)
    def test_exact_average_after_one_period_for_powers_of_two(self, n):
        topo = topology.one_peer_exponential(n)
        self.assertEqual(topo.period, max(1, int(np.log2(n))))
        product = np.eye(n)
        for step in range(topo.period):
            product = topo.weights(step) @ product
        np.testing.assert_allclose(product, np.full((n, n), 1 / n), atol=1e-12)
        self.assertEqual(topo.spectral_gap(), 1.0)

    @parameterized.parameters(3, 6, 12)
    def test_not_exact_for_other_sizes(self, n):
        topo = topology.one_peer_exponential(n)
        product = _linalg.period_product(topo.weights_table())
        self.assertGreater(np.abs(product - 1 / n).max(), 1e-3)
        self.assertGreater(topo.spectral_gap(), 0.0)
        self.assertLess(topo.spectral_gap(), 1.0)

    def test_spectral_gap_is_per_round(self):
        topo = topology.one_peer_exponential(6)
        product = _linalg.period_product(topo.weights_table())
        norm = np.linalg.norm(product - 1 / 6, 2)
        self.assertAlmostEqual(
            topo.spectral_gap(), 1 - norm ** (1 / topo.period), places=12
        )

    def test_rejects_bad_num_nodes(self):
        with self.assertRaisesRegex(ValueError, r"Received: num_nodes=0"):
            topology.one_peer_exponential(0)
        with self.assertRaisesRegex(TypeError, r"`num_nodes` must be an int"):
            topology.one_peer_exponential(None)


class RandomMatchingTest(parameterized.TestCase):
    def test_doubly_stochastic_and_symmetric(self):
        for n in _SIZES:
            topo = topology.random_matching(n)
            self.assertEqual(topo.period, 64)
            self.assertTrue(topology.is_doubly_stochastic(topo))
            self.assertTrue(topo.is_symmetric)
            self.assertEqual(topo.name, "random_matching")

    def test_every_round_is_a_matching(self):
        for n in (2, 3, 8, 9, 16, 17):
            table = topology.random_matching(n, seed=3, period=20)
            for step in range(table.period):
                weights = table.weights(step)
                partners = [table.neighbors(i, step) for i in range(n)]
                # Each node has at most one partner, and partnership is mutual.
                for i, partner in enumerate(partners):
                    self.assertLessEqual(len(partner), 1)
                    if partner:
                        self.assertEqual(partners[partner[0]], (i,))
                        self.assertEqual(weights[i, partner[0]], 0.5)
                        self.assertEqual(weights[i, i], 0.5)
                    else:
                        self.assertEqual(weights[i, i], 1.0)
                # All nodes are matched but one when n is odd.
                unmatched = sum(not partner for partner in partners)
                self.assertEqual(unmatched, n % 2)

    def test_deterministic_given_seed(self):
        first = topology.random_matching(10, seed=7, period=16)
        again = topology.random_matching(10, seed=7, period=16)
        other = topology.random_matching(10, seed=8, period=16)
        np.testing.assert_array_equal(
            first.weights_table(), again.weights_table()
        )
        self.assertFalse(
            np.array_equal(first.weights_table(), other.weights_table())
        )

    def test_rounds_differ(self):
        table = topology.random_matching(10, seed=0, period=16).weights_table()
        self.assertGreater(len({w.tobytes() for w in table}), 1)

    def test_single_node_and_pair(self):
        np.testing.assert_array_equal(
            topology.random_matching(1, period=3).weights_table(),
            np.ones((3, 1, 1)),
        )
        np.testing.assert_array_equal(
            topology.random_matching(2, period=2).weights_table(),
            np.full((2, 2, 2), 0.5),
        )

    def test_rejects_period_too_short_to_connect(self):
        with self.assertRaisesRegex(
            ValueError,
            r"`period` must be long enough for the random matchings to "
            r"connect all nodes.*Received: num_nodes=3, seed=0, period=1",
        ):
            topology.random_matching(3, seed=0, period=1)

    @parameterized.named_parameters(
        ("num_nodes", {"num_nodes": 0}, ValueError, r"num_nodes=0"),
        ("seed", {"seed": -1}, ValueError, r"`seed` must be an integer >= 0"),
        ("seed_none", {"seed": None}, TypeError, r"`seed` must be an integer"),
        ("period", {"period": 0}, ValueError, r"`period` must be an integer"),
        ("period_float", {"period": 2.5}, TypeError, r"Received: period=2.5"),
    )
    def test_rejects_bad_arguments(self, override, error, message):
        kwargs = {"num_nodes": 4, "seed": 0, "period": 8, **override}
        with self.assertRaisesRegex(error, message):
            topology.random_matching(**kwargs)


if __name__ == "__main__":
    absltest.main()
