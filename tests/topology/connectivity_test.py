"""Tests for `adjacency`, `connected_components`, `two_coloring` and
`edge_coloring`."""

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral import topology


class AdjacencyTest(parameterized.TestCase):
    def test_ring(self):
        expected = np.zeros((5, 5), dtype=bool)
        for i in range(5):
            expected[i, (i + 1) % 5] = expected[(i + 1) % 5, i] = True
        np.testing.assert_array_equal(
            topology.adjacency(topology.ring(5)), expected
        )

    def test_union_of_the_rounds_of_a_time_varying_topology(self):
        # One peer per round (offsets 1, 2, 4), directed: i is adjacent to
        # i +- 1, i +- 2 and i + 4.
        got = topology.adjacency(topology.one_peer_exponential(8))
        for i in range(8):
            self.assertEqual(
                np.flatnonzero(got[i]).tolist(),
                sorted((i + s) % 8 for s in (1, -1, 2, -2, 4)),
            )

    def test_directed_weights_give_undirected_edges(self):
        # 0 listens to 1 only: still one undirected edge 0-1.
        weights = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0, 0, 1.0]])
        got = topology.adjacency(weights)
        np.testing.assert_array_equal(got, got.T)
        self.assertEqual(np.argwhere(got).tolist(), [[0, 1], [1, 0]])

    def test_weights_of_a_period(self):
        rounds = np.stack([np.eye(3), np.full((3, 3), 1 / 3)])
        self.assertTrue(topology.adjacency(rounds)[0, 2])

    def test_bad_shape(self):
        with self.assertRaisesRegex(ValueError, r"Received: shape \(2, 3\)"):
            topology.adjacency(np.ones((2, 3)))

    def test_not_numeric(self):
        with self.assertRaisesRegex(TypeError, "real numbers"):
            topology.adjacency([["a"]])


class ConnectedComponentsTest(parameterized.TestCase):
    def test_connected(self):
        for topo in (topology.ring(7), topology.torus(2, 4)):
            self.assertEqual(
                topology.connected_components(topology.adjacency(topo)),
                [list(range(topo.num_nodes))],
            )

    def test_two_pairs_and_an_isolated_node(self):
        edges = np.zeros((5, 5), bool)
        edges[0, 3] = edges[3, 0] = edges[1, 4] = edges[4, 1] = True
        self.assertEqual(
            topology.connected_components(edges), [[0, 3], [1, 4], [2]]
        )


class TwoColoringTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("ring4", topology.ring(4), [0, 1, 0, 1]),
        ("ring6", topology.ring(6), [0, 1, 0, 1, 0, 1]),
        ("torus2x4", topology.torus(2, 4), "bipartite"),
        ("ring3", topology.ring(3), None),
        ("ring5", topology.ring(5), None),
        ("complete4", topology.complete(4), None),
    )
    def test_two_coloring(self, topo, colouring):
        edges = topology.adjacency(topo)
        got = topology.two_coloring(edges)
        if colouring is None:
            self.assertIsNone(got)
            return
        if colouring != "bipartite":
            self.assertEqual(got, colouring)
        for i, j in zip(*np.nonzero(edges)):
            self.assertNotEqual(got[i], got[j], (i, j, got))

    def test_each_component_starts_at_colour_0(self):
        edges = np.kron(np.eye(2), [[0, 1], [1, 0]])
        self.assertEqual(topology.two_coloring(edges), [0, 1, 0, 1])


def _random_bipartite(seed, left, right, density):
    rng = np.random.default_rng(seed)
    edges = np.zeros((left + right, left + right), dtype=bool)
    edges[:left, left:] = rng.random((left, right)) < density
    return edges | edges.T


class EdgeColoringTest(parameterized.TestCase):
    def assert_proper(self, edges, colours):
        edges = np.asarray(edges, dtype=bool)
        np.testing.assert_array_equal(colours >= 0, edges)
        np.testing.assert_array_equal(colours, colours.T)
        degree = int(edges.sum(axis=1).max())
        self.assertEqual(int(colours.max()) + 1, degree)
        for node in range(len(edges)):
            used = colours[node][colours[node] >= 0]
            # No node has two edges of one colour: each colour is a matching.
            self.assertLen(set(used.tolist()), len(used), (node, colours))

    @parameterized.named_parameters(
        ("ring2", topology.ring(2)),
        ("ring8", topology.ring(8)),
        ("torus4x4", topology.torus(4, 4)),
        ("torus4x6", topology.torus(4, 6)),
    )
    def test_topologies_get_degree_many_colours(self, topo):
        edges = topology.adjacency(topo)
        self.assert_proper(edges, topology.edge_coloring(edges))

    def test_even_ring_alternates_two_colours(self):
        colours = topology.edge_coloring(topology.adjacency(topology.ring(8)))
        for i in range(8):
            self.assertNotEqual(colours[i, (i + 1) % 8], colours[i, i - 1])

    @parameterized.parameters(range(20))
    def test_random_bipartite_graphs(self, seed):
        # Irregular graphs need the alternating-path swaps: a greedy
        # colouring would use more than `degree` colours on some of them.
        edges = _random_bipartite(seed, 5 + seed % 4, 7, 0.6)
        if not edges.any():
            self.skipTest("empty graph")
        self.assert_proper(edges, topology.edge_coloring(edges))

    @parameterized.named_parameters(
        ("odd_cycle", topology.adjacency(topology.ring(5)), "bipartite"),
        ("not_square", np.ones((2, 3)), "square"),
        ("asymmetric", [[0, 1], [0, 0]], "symmetric"),
        ("self_loop", [[1, 1], [1, 0]], "self-loops"),
    )
    def test_rejects(self, edges, message):
        with self.assertRaisesRegex(ValueError, message):
            topology.edge_coloring(edges)


if __name__ == "__main__":
    absltest.main()
