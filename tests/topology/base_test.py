"""Tests for `Topology`: accessors and validation."""

import re

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral import topology


class TopologyTest(parameterized.TestCase):
    def test_static_accessors(self):
        weights = np.full((3, 3), 1 / 3)
        topo = topology.Topology(weights, name="k3")
        self.assertEqual(topo.num_nodes, 3)
        self.assertEqual(topo.period, 1)
        self.assertFalse(topo.is_time_varying)
        self.assertEqual(topo.name, "k3")
        np.testing.assert_array_equal(topo.weights(), weights)
        np.testing.assert_array_equal(topo.weights(step=5), weights)
        self.assertEqual(topo.weights_table().shape, (1, 3, 3))
        self.assertEqual(
            repr(topo), "Topology(name='k3', num_nodes=3, period=1)"
        )

    def test_repr_without_name(self):
        topo = topology.Topology(np.full((2, 2), 0.5))
        self.assertIsNone(topo.name)
        self.assertEqual(repr(topo), "Topology(num_nodes=2, period=1)")

    def test_time_varying_weights_cycle(self):
        topo = topology.one_peer_exponential(8)
        self.assertTrue(topo.is_time_varying)
        self.assertEqual(topo.period, 3)
        for step in range(7):
            np.testing.assert_array_equal(
                topo.weights(step), topo.weights_table()[step % 3]
            )

    def test_single_node(self):
        topo = topology.Topology([[1.0]])
        self.assertEqual(topo.num_nodes, 1)
        self.assertEqual(topo.neighbors(0), ())
        self.assertEqual(topo.max_degree, 0)
        self.assertEqual(topo.spectral_gap(), 1.0)

    def test_keeps_a_read_only_copy(self):
        weights = np.full((2, 2), 0.5)
        topo = topology.Topology(weights)
        weights[0, 0] = 7.0
        self.assertEqual(topo.weights()[0, 0], 0.5)
        self.assertEqual(topo.weights().dtype, np.float64)
        with self.assertRaisesRegex(ValueError, "read-only"):
            topo.weights()[0, 0] = 1.0
        with self.assertRaisesRegex(ValueError, "read-only"):
            topo.weights_table()[0, 0, 0] = 1.0

    def test_accepts_nested_lists_of_ints(self):
        topo = topology.Topology([[1]])
        self.assertEqual(topo.weights().dtype, np.float64)
        self.assertEqual(topo.spectral_gap(), 1.0)

    def test_neighbors_and_out_neighbors(self):
        topo = topology.exponential(8)
        self.assertEqual(topo.neighbors(0), (1, 2, 4))
        self.assertEqual(topo.out_neighbors(0), (4, 6, 7))
        self.assertEqual(topo.neighbors(6), (0, 2, 7))
        self.assertEqual(topo.out_neighbors(6), (2, 4, 5))
        ring = topology.ring(5)
        for i in range(5):
            self.assertEqual(ring.neighbors(i), ring.out_neighbors(i))
        self.assertEqual(ring.neighbors(0), (1, 4))

    def test_neighbors_follow_the_step(self):
        topo = topology.one_peer_exponential(8)
        self.assertEqual(
            [topo.neighbors(3, step) for step in range(4)],
            [(4,), (5,), (7,), (4,)],
        )
        self.assertEqual(
            [topo.out_neighbors(3, step) for step in range(4)],
            [(2,), (1,), (7,), (2,)],
        )

    @parameterized.named_parameters(
        ("ring_8", topology.ring(8), 2),
        ("ring_2", topology.ring(2), 1),
        ("complete_5", topology.complete(5), 4),
        ("torus_3x3", topology.torus(3, 3), 4),
        ("exponential_8", topology.exponential(8), 3),
        ("one_peer_8", topology.one_peer_exponential(8), 1),
        ("random_matching_7", topology.random_matching(7), 1),
    )
    def test_max_degree(self, topo, expected):
        self.assertEqual(topo.max_degree, expected)

    @parameterized.named_parameters(
        ("ring", topology.ring(6), True),
        ("torus", topology.torus(3, 4), True),
        ("complete", topology.complete(4), True),
        ("exponential_3_is_complete", topology.exponential(3), True),
        ("exponential_8", topology.exponential(8), False),
        ("one_peer_4", topology.one_peer_exponential(4), False),
        ("one_peer_2", topology.one_peer_exponential(2), True),
        ("random_matching", topology.random_matching(9), True),
    )
    def test_is_symmetric(self, topo, expected):
        self.assertIs(topo.is_symmetric, expected)

    def test_array_protocol_for_static(self):
        topo = topology.ring(3)
        np.testing.assert_array_equal(np.asarray(topo), topo.weights())
        copied = np.array(topo)
        copied[0, 0] = 9.0
        self.assertEqual(topo.weights()[0, 0], 1 / 3)
        self.assertEqual(np.asarray(topo, dtype=np.float32).dtype, np.float32)

    def test_array_protocol_rejects_time_varying(self):
        topo = topology.one_peer_exponential(4)
        with self.assertRaisesRegex(
            TypeError, r"time-varying.*Use `weights\(step\)`"
        ):
            np.asarray(topo)

    @parameterized.named_parameters(
        ("too_large", 5, ValueError, r"`i` must be a node index in \[0, 5\)"),
        ("negative", -1, ValueError, r"`i` must be an integer >= 0"),
        ("float", 1.0, TypeError, r"`i` must be an integer. Received: i=1.0"),
        ("bool", True, TypeError, r"`i` must be an integer"),
    )
    def test_neighbors_rejects_bad_node(self, i, error, message):
        with self.assertRaisesRegex(error, message):
            topology.ring(5).neighbors(i)
        with self.assertRaisesRegex(error, message):
            topology.ring(5).out_neighbors(i)

    def test_accepts_numpy_integers(self):
        topo = topology.ring(5)
        self.assertEqual(topo.neighbors(np.int64(0), step=np.int32(2)), (1, 4))

    def test_weights_rejects_bad_step(self):
        with self.assertRaisesRegex(
            ValueError, r"`step` must be an integer >= 0. Received: step=-1"
        ):
            topology.ring(3).weights(-1)
        with self.assertRaisesRegex(TypeError, r"`step` must be an integer"):
            topology.ring(3).weights(0.5)


class TopologyValidationTest(parameterized.TestCase):
    def test_rejects_non_numeric(self):
        with self.assertRaisesRegex(
            TypeError, r"`weights` must be an array-like of real numbers"
        ):
            topology.Topology([["a", "b"], ["c", "d"]])
        with self.assertRaisesRegex(
            TypeError, r"Received: weights of type ndarray with dtype complex"
        ):
            topology.Topology(np.eye(2) * 1j)
        with self.assertRaisesRegex(TypeError, r"weights of type list"):
            topology.Topology([[0.5, 0.5], [1.0]])

    def test_rejects_bad_name(self):
        with self.assertRaisesRegex(
            TypeError, r"`name` must be a string or None. Received: name=3"
        ):
            topology.Topology([[1.0]], name=3)

    @parameterized.named_parameters(
        ("scalar", 1.0, r"Received: weights with shape \(\)"),
        ("vector", [1.0], r"Received: weights with shape \(1,\)"),
        ("4d", np.ones((1, 1, 1, 1)), r"shape \(1, 1, 1, 1\)"),
    )
    def test_rejects_wrong_ndim(self, weights, message):
        with self.assertRaisesRegex(
            ValueError, r"`weights` must have shape \(n, n\).*" + message
        ):
            topology.Topology(weights)

    @parameterized.named_parameters(
        ("static", np.full((2, 3), 0.5), r"\(2, 3\)"),
        ("time_varying", np.full((4, 2, 3), 0.5), r"\(4, 2, 3\)"),
    )
    def test_rejects_non_square(self, weights, shape):
        with self.assertRaisesRegex(
            ValueError,
            r"`weights` must be square.*Received: weights with shape " + shape,
        ):
            topology.Topology(weights)

    @parameterized.named_parameters(
        ("no_nodes", np.zeros((0, 0))),
        ("no_steps", np.zeros((0, 2, 2))),
        ("no_nodes_time_varying", np.zeros((3, 0, 0))),
    )
    def test_rejects_empty(self, weights):
        with self.assertRaisesRegex(
            ValueError, r"`weights` must describe at least one node"
        ):
            topology.Topology(weights)

    @parameterized.named_parameters(("nan", np.nan), ("inf", np.inf))
    def test_rejects_non_finite(self, value):
        weights = np.full((2, 2), 0.5)
        weights[1, 0] = value
        with self.assertRaisesRegex(
            ValueError,
            r"`weights` must be finite. Received: weights with 1 NaN or "
            r"infinite entries",
        ):
            topology.Topology(weights)

    def test_rejects_negative_and_says_where(self):
        weights = np.array([[1.5, -0.5], [-0.5, 1.5]])
        with self.assertRaisesRegex(
            ValueError,
            r"`weights` must be non-negative. Received: weights\[0, 1\]=-0.5 "
            r"\(and 1 more negative entries\)",
        ):
            topology.Topology(weights)

    def test_rejects_negative_in_time_varying_and_says_step(self):
        table = np.stack([np.full((2, 2), 0.5)] * 3)
        table[2] = [[1.25, -0.25], [-0.25, 1.25]]
        with self.assertRaisesRegex(
            ValueError, r"Received: weights\[2, 0, 1\]=-0.25"
        ):
            topology.Topology(table)

    def test_rejects_bad_row_and_column_sums(self):
        weights = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
        message = (
            "`weights` must be doubly stochastic (every row and every column "
            "sums to 1, within 1e-06). Received: row sums [1., 1., 1.] (off "
            "at rows []) and column sums [1. , 1.5, 0.5] (off at columns "
            "[1, 2])"
        )
        with self.assertRaisesRegex(ValueError, re.escape(message)):
            topology.Topology(weights)

    def test_rejects_bad_sums_in_time_varying_and_says_step(self):
        table = np.stack([np.full((2, 2), 0.5)] * 3)
        table[1] = [[0.6, 0.6], [0.4, 0.4]]
        with self.assertRaisesRegex(
            ValueError,
            r"doubly stochastic.*Received: at step t=1, row sums \[1.2, 0.8\] "
            r"\(off at rows \[0, 1\]\) and column sums \[1., 1.\]",
        ):
            topology.Topology(table)

    def test_accepts_sums_within_tolerance(self):
        weights = np.full((2, 2), 0.5)
        weights[0, 0] += 1e-8
        self.assertEqual(topology.Topology(weights).num_nodes, 2)

    def test_rejects_disconnected(self):
        with self.assertRaisesRegex(
            ValueError,
            r"`weights` must describe a mixing graph on which gossip reaches "
            r"consensus: connected.*Received: weights whose spectral gap is "
            r"0, so gossip would never reach consensus",
        ):
            topology.Topology(np.eye(3))

    def test_rejects_disconnected_two_components(self):
        block = np.full((2, 2), 0.5)
        weights = np.block(
            [[block, np.zeros((2, 2))], [np.zeros((2, 2)), block]]
        )
        with self.assertRaisesRegex(ValueError, r"never reach consensus"):
            topology.Topology(weights)

    def test_rejects_periodic(self):
        # A pure swap is connected but oscillates: x0, x1 -> x1, x0 -> ...
        with self.assertRaisesRegex(ValueError, r"not periodic"):
            topology.Topology([[0.0, 1.0], [1.0, 0.0]])

    def test_rejects_time_varying_disconnected_over_period(self):
        half = np.kron(np.eye(2), np.full((2, 2), 0.5))
        with self.assertRaisesRegex(
            ValueError,
            r"spectral gap over one period.*never reach consensus",
        ):
            topology.Topology(np.stack([half, half]))

    def test_accepts_time_varying_connected_only_over_period(self):
        # Neither round alone connects the 4 nodes; both together do.
        first = np.kron(np.eye(2), np.full((2, 2), 0.5))
        second = first[[0, 2, 1, 3]][:, [0, 2, 1, 3]]
        topo = topology.Topology(np.stack([first, second]))
        self.assertEqual(topo.spectral_gap(), 1.0)


if __name__ == "__main__":
    absltest.main()
