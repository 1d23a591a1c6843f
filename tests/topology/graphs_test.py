"""Tests for the static topologies, against closed forms."""

import itertools

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral import topology

# 1..17 and some larger sizes, including powers of 2 and primes.
_SIZES = (*range(1, 18), 31, 32, 64, 100)


def _gap_from_eigenvalues(eigenvalues: np.ndarray) -> float:
    """Returns 1 - max |lambda_k| over all but the eigenvalue 1 (k = 0)."""
    return 1.0 - float(np.max(np.abs(eigenvalues[1:]), initial=0.0))


class RegularGraphsTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("ring", topology.ring),
        ("exponential", topology.exponential),
        ("complete", topology.complete),
    )
    def test_doubly_stochastic(self, constructor):
        for n in _SIZES:
            topo = constructor(n)
            self.assertEqual(topo.num_nodes, n)
            self.assertEqual(topo.period, 1)
            self.assertTrue(topology.is_doubly_stochastic(topo), msg=f"n={n}")
            self.assertGreater(topo.spectral_gap(), 0.0)

    @parameterized.named_parameters(
        ("ring", topology.ring), ("complete", topology.complete)
    )
    def test_symmetric(self, constructor):
        for n in _SIZES:
            self.assertTrue(constructor(n).is_symmetric, msg=f"n={n}")

    def test_names(self):
        self.assertEqual(topology.ring(4).name, "ring")
        self.assertEqual(topology.torus(2, 2).name, "torus")
        self.assertEqual(topology.exponential(4).name, "exponential")
        self.assertEqual(topology.complete(4).name, "complete")

    def test_ring_small_sizes(self):
        np.testing.assert_array_equal(topology.ring(1).weights(), [[1.0]])
        np.testing.assert_array_equal(
            topology.ring(2).weights(), np.full((2, 2), 0.5)
        )
        np.testing.assert_allclose(
            topology.ring(3).weights(), np.full((3, 3), 1 / 3)
        )

    def test_ring_three_diagonals(self):
        for n in range(3, 18):
            weights = topology.ring(n).weights()
            eye = np.eye(n)
            expected = (eye + np.roll(eye, 1, 1) + np.roll(eye, -1, 1)) / 3
            np.testing.assert_allclose(weights, expected, atol=1e-15)
            self.assertEqual(topology.ring(n).neighbors(0), (1, n - 1))

    def test_ring_spectral_gap_closed_form(self):
        for n in (3, 4, 5, 8, 13, 16, 17, 31, 64, 100):
            k = np.arange(n)
            eigenvalues = 1 / 3 + 2 / 3 * np.cos(2 * np.pi * k / n)
            self.assertAlmostEqual(
                topology.ring(n).spectral_gap(),
                _gap_from_eigenvalues(eigenvalues),
                places=10,
                msg=f"n={n}",
            )

    def test_complete(self):
        for n in _SIZES:
            topo = topology.complete(n)
            np.testing.assert_allclose(topo.weights(), np.full((n, n), 1 / n))
            self.assertEqual(topo.spectral_gap(), 1.0)
            self.assertEqual(topo.max_degree, n - 1)

    def test_exponential_neighbors(self):
        for n in _SIZES:
            topo = topology.exponential(n)
            num_hops = int(np.ceil(np.log2(n))) if n > 1 else 0
            expected = sorted({(5 + 2**k) % n for k in range(num_hops)} - {5})
            if n > 5:
                self.assertEqual(topo.neighbors(5), tuple(expected))
            self.assertEqual(topo.max_degree, num_hops)
            np.testing.assert_allclose(
                topo.weights()[topo.weights() > 0], 1 / (num_hops + 1)
            )

    def test_exponential_is_circulant(self):
        for n in _SIZES:
            weights = topology.exponential(n).weights()
            for shift in range(n):
                np.testing.assert_array_equal(
                    np.roll(weights, (shift, shift), axis=(0, 1)), weights
                )

    def test_exponential_is_not_symmetric_in_general(self):
        self.assertFalse(topology.exponential(8).is_symmetric)
        self.assertFalse(topology.exponential(5).is_symmetric)
        # Small sizes where every hop is its own inverse.
        self.assertTrue(topology.exponential(2).is_symmetric)
        self.assertTrue(topology.exponential(3).is_symmetric)

    def test_exponential_spectral_gap_closed_form(self):
        for n in _SIZES:
            first_row = topology.exponential(n).weights()[0]
            # A circulant matrix is normal: its singular values are the moduli
            # of its eigenvalues, the DFT of its first row.
            eigenvalues = np.fft.fft(first_row)
            self.assertAlmostEqual(
                topology.exponential(n).spectral_gap(),
                _gap_from_eigenvalues(eigenvalues),
                places=10,
                msg=f"n={n}",
            )

    def test_exponential_beats_ring(self):
        for n in (8, 16, 32, 64, 100):
            self.assertGreater(
                topology.exponential(n).spectral_gap(),
                topology.ring(n).spectral_gap(),
            )

    @parameterized.named_parameters(
        ("ring", topology.ring),
        ("exponential", topology.exponential),
        ("complete", topology.complete),
    )
    def test_rejects_bad_num_nodes(self, constructor):
        with self.assertRaisesRegex(
            ValueError,
            r"`num_nodes` must be an integer >= 1. "
            r"Received: num_nodes=0",
        ):
            constructor(0)
        with self.assertRaisesRegex(
            TypeError,
            r"`num_nodes` must be an integer. Received: num_nodes=4.0 of "
            r"type float",
        ):
            constructor(4.0)
        with self.assertRaisesRegex(TypeError, r"num_nodes='4' of type str"):
            constructor("4")

    def test_accepts_numpy_integer(self):
        self.assertEqual(topology.ring(np.int64(5)).num_nodes, 5)


class TorusTest(parameterized.TestCase):
    def test_doubly_stochastic_and_symmetric(self):
        for rows, cols in itertools.product(range(1, 7), repeat=2):
            topo = topology.torus(rows, cols)
            self.assertEqual(topo.num_nodes, rows * cols)
            self.assertTrue(topology.is_doubly_stochastic(topo))
            self.assertTrue(topo.is_symmetric)
            self.assertGreater(topo.spectral_gap(), 0.0)

    def test_larger(self):
        topo = topology.torus(8, 16)
        self.assertTrue(topology.is_doubly_stochastic(topo))
        self.assertEqual(topo.max_degree, 4)

    def test_neighbors(self):
        topo = topology.torus(3, 4)
        # Node 5 is row 1, column 1.
        self.assertEqual(topo.neighbors(5), (1, 4, 6, 9))
        # Node 0 wraps around both ways.
        self.assertEqual(topo.neighbors(0), (1, 3, 4, 8))
        np.testing.assert_allclose(topo.weights()[5, [1, 4, 5, 6, 9]], 0.2)

    @parameterized.named_parameters(
        ("1x1", 1, 1, 0),
        ("2x2", 2, 2, 2),
        ("2x3", 2, 3, 3),
        ("1x5", 1, 5, 2),
        ("3x3", 3, 3, 4),
        ("2x1", 2, 1, 1),
    )
    def test_duplicate_neighbors_collapse(self, rows, cols, degree):
        topo = topology.torus(rows, cols)
        self.assertEqual(topo.max_degree, degree)
        np.testing.assert_allclose(
            topo.weights()[topo.weights() > 0], 1 / (degree + 1)
        )

    def test_one_row_is_a_ring(self):
        for n in range(1, 12):
            np.testing.assert_allclose(
                topology.torus(1, n).weights(), topology.ring(n).weights()
            )
            np.testing.assert_allclose(
                topology.torus(n, 1).weights(), topology.ring(n).weights()
            )

    def test_spectral_gap_closed_form(self):
        for rows, cols in [(3, 3), (3, 4), (4, 4), (3, 7), (5, 6), (8, 8)]:
            a = np.arange(rows)[:, np.newaxis]
            b = np.arange(cols)[np.newaxis, :]
            # Kronecker sum of the two cycles' adjacency spectra.
            eigenvalues = (
                1
                + 2 * np.cos(2 * np.pi * a / rows)
                + 2 * np.cos(2 * np.pi * b / cols)
            ) / 5
            self.assertAlmostEqual(
                topology.torus(rows, cols).spectral_gap(),
                _gap_from_eigenvalues(eigenvalues.ravel()),
                places=10,
                msg=f"{rows}x{cols}",
            )

    @parameterized.named_parameters(
        ("rows_zero", 0, 3, ValueError, r"`rows` must be an integer >= 1"),
        ("cols_zero", 3, 0, ValueError, r"`cols` must be an integer >= 1"),
        ("rows_float", 2.0, 3, TypeError, r"`rows` must be an integer"),
        ("cols_none", 2, None, TypeError, r"Received: cols=None"),
    )
    def test_rejects_bad_sides(self, rows, cols, error, message):
        with self.assertRaisesRegex(error, message):
            topology.torus(rows, cols)


class FromAdjacencyTest(parameterized.TestCase):
    def test_path(self):
        path = np.diag(np.ones(3), 1) + np.diag(np.ones(3), -1)
        topo = topology.from_adjacency(path)
        expected = np.array(
            [
                [2 / 3, 1 / 3, 0, 0],
                [1 / 3, 1 / 3, 1 / 3, 0],
                [0, 1 / 3, 1 / 3, 1 / 3],
                [0, 0, 1 / 3, 2 / 3],
            ]
        )
        np.testing.assert_allclose(topo.weights(), expected, atol=1e-15)
        self.assertTrue(topo.is_symmetric)
        self.assertEqual(topo.neighbors(0), (1,))
        self.assertEqual(topo.neighbors(2), (1, 3))

    def test_star(self):
        leaves = 5
        star = np.zeros((leaves + 1, leaves + 1), dtype=bool)
        star[0, 1:] = star[1:, 0] = True
        weights = topology.from_adjacency(star).weights()
        np.testing.assert_allclose(weights[0], 1 / (leaves + 1))
        np.testing.assert_allclose(weights[1:, 0], 1 / (leaves + 1))
        np.testing.assert_allclose(np.diag(weights)[1:], leaves / (leaves + 1))
        self.assertTrue(topology.is_doubly_stochastic(weights))

    def test_ignores_diagonal(self):
        np.testing.assert_allclose(
            topology.from_adjacency(np.ones((3, 3))).weights(),
            topology.complete(3).weights(),
        )

    def test_regular_graph_matches_uniform_weights(self):
        for n in range(3, 12):
            ring_adjacency = (topology.ring(n).weights() > 0).astype(int)
            np.testing.assert_allclose(
                topology.from_adjacency(ring_adjacency).weights(),
                topology.ring(n).weights(),
            )

    def test_single_node(self):
        np.testing.assert_array_equal(
            topology.from_adjacency([[0]]).weights(), [[1.0]]
        )

    def test_random_graphs_are_doubly_stochastic(self):
        rng = np.random.default_rng(0)
        for n in range(2, 18):
            upper = np.triu(rng.random((n, n)) < 0.5, 1)
            # Add a path so that the graph is connected.
            adjacency = upper | upper.T | np.eye(n, k=1, dtype=bool)
            adjacency |= adjacency.T
            topo = topology.from_adjacency(adjacency)
            self.assertTrue(topology.is_doubly_stochastic(topo))
            self.assertTrue(topo.is_symmetric)

    @parameterized.named_parameters(
        ("vector", [0, 1], r"`adjacency` must be a non-empty square"),
        ("not_square", np.zeros((2, 3)), r"Received: adjacency with shape"),
        ("empty", np.zeros((0, 0)), r"shape \(0, 0\)"),
        (
            "not_symmetric",
            [[0, 1, 1], [1, 0, 0], [0, 0, 0]],
            r"`adjacency` must be symmetric \(an undirected graph\). "
            r"Received: adjacency\[0, 2\]=1 but adjacency\[2, 0\]=0",
        ),
        (
            "not_binary",
            [[0, 2], [2, 0]],
            r"`adjacency` must contain only 0 and 1.*values \[0.0, 2.0\]",
        ),
        ("disconnected", np.zeros((3, 3)), r"never reach consensus"),
    )
    def test_rejects_bad_adjacency(self, adjacency, message):
        with self.assertRaisesRegex(ValueError, message):
            topology.from_adjacency(adjacency)

    def test_rejects_non_numeric(self):
        with self.assertRaisesRegex(
            TypeError, r"`adjacency` must be an array-like of real numbers"
        ):
            topology.from_adjacency([["a"]])


if __name__ == "__main__":
    absltest.main()
