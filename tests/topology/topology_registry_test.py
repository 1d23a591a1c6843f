"""Tests for `NAMES`, `get` and `resolve`."""

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral import topology


class GetTest(parameterized.TestCase):
    def test_names(self):
        self.assertEqual(
            topology.NAMES,
            (
                "ring",
                "torus",
                "exponential",
                "complete",
                "one_peer_exponential",
                "random_matching",
            ),
        )

    @parameterized.parameters(*topology.NAMES)
    def test_every_name(self, name):
        for n in (1, 2, 5, 8, 12):
            topo = topology.get(name, n)
            self.assertEqual(topo.num_nodes, n)
            self.assertEqual(topo.name, name)

    def test_matches_constructors(self):
        pairs = [
            (topology.get("ring", 6), topology.ring(6)),
            (topology.get("exponential", 6), topology.exponential(6)),
            (topology.get("complete", 6), topology.complete(6)),
            (
                topology.get("one_peer_exponential", 6),
                topology.one_peer_exponential(6),
            ),
            (
                topology.get("random_matching", 6, seed=2, period=5),
                topology.random_matching(6, seed=2, period=5),
            ),
            (topology.get("torus", 6), topology.torus(2, 3)),
        ]
        for got, expected in pairs:
            np.testing.assert_array_equal(
                got.weights_table(), expected.weights_table()
            )

    @parameterized.named_parameters(
        ("square", 16, {}, 4, 4),
        ("rectangle", 12, {}, 3, 4),
        ("prime", 7, {}, 1, 7),
        ("one", 1, {}, 1, 1),
        ("two", 2, {}, 1, 2),
        ("rows", 12, {"rows": 2}, 2, 6),
        ("cols", 12, {"cols": 2}, 6, 2),
        ("both", 12, {"rows": 4, "cols": 3}, 4, 3),
    )
    def test_torus_shape(self, n, kwargs, rows, cols):
        np.testing.assert_array_equal(
            topology.get("torus", n, **kwargs).weights(),
            topology.torus(rows, cols).weights(),
        )

    @parameterized.named_parameters(
        (
            "product",
            {"rows": 4, "cols": 4},
            r"`rows` \* `cols` must equal num_nodes=12. "
            r"Received: rows=4, cols=4",
        ),
        (
            "rows_divisor",
            {"rows": 5},
            r"`rows` must divide num_nodes=12. Received: rows=5",
        ),
        (
            "cols_divisor",
            {"cols": 7},
            r"`cols` must divide num_nodes=12. Received: cols=7",
        ),
        ("rows_zero", {"rows": 0}, r"`rows` must be an integer >= 1"),
    )
    def test_torus_rejects_bad_shape(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            topology.get("torus", 12, **kwargs)

    def test_torus_rejects_non_integer_side(self):
        with self.assertRaisesRegex(TypeError, r"`rows` must be an integer"):
            topology.get("torus", 12, rows=2.0)

    def test_rejects_unknown_name(self):
        with self.assertRaisesRegex(
            ValueError,
            r"`name` must be one of 'ring', 'torus', 'exponential', "
            r"'complete', 'one_peer_exponential', 'random_matching'. "
            r"Received: name='star'",
        ):
            topology.get("star", 4)

    def test_rejects_non_string_name(self):
        with self.assertRaisesRegex(
            TypeError, r"`name` must be a string. Received: name=3 of type int"
        ):
            topology.get(3, 4)

    @parameterized.named_parameters(
        ("ring", "ring", {"seed": 1}, r"'ring': seed. Valid options: none"),
        (
            "random_matching",
            "random_matching",
            {"rows": 1},
            r"'random_matching': rows. Valid options: seed, period",
        ),
    )
    def test_rejects_unknown_option(self, name, kwargs, message):
        with self.assertRaisesRegex(
            TypeError, r"Unknown option\(s\) for topology " + message
        ):
            topology.get(name, 4, **kwargs)

    def test_rejects_bad_num_nodes(self):
        for name in topology.NAMES:
            with self.assertRaisesRegex(ValueError, r"Received: num_nodes=0"):
                topology.get(name, 0)


class ResolveTest(parameterized.TestCase):
    def test_name(self):
        topo = topology.resolve("exponential", 8)
        self.assertEqual(topo.name, "exponential")
        self.assertEqual(topo.num_nodes, 8)

    def test_topology_is_returned_as_is(self):
        topo = topology.one_peer_exponential(4)
        self.assertIs(topology.resolve(topo, 4), topo)

    @parameterized.named_parameters(
        ("array", np.full((3, 3), 1 / 3)),
        ("list", [[0.5, 0.5], [0.5, 0.5]]),
        ("tuple", ((1.0,),)),
        ("time_varying", topology.one_peer_exponential(4).weights_table()),
    )
    def test_array_like(self, spec):
        topo = topology.resolve(
            spec, len(spec[0]) if np.ndim(spec) == 3 else len(spec)
        )
        np.testing.assert_array_equal(
            topo.weights_table().reshape(np.shape(spec)), spec
        )

    def test_rejects_wrong_num_nodes(self):
        message = (
            r"`topology` must have num_nodes=4 nodes \(one per "
            r"replica/worker\). Received: a topology with 6 nodes."
        )
        with self.assertRaisesRegex(ValueError, message):
            topology.resolve(topology.ring(6), 4)
        with self.assertRaisesRegex(ValueError, message):
            topology.resolve(np.full((6, 6), 1 / 6), 4)

    def test_rejects_invalid_weights(self):
        with self.assertRaisesRegex(ValueError, r"doubly stochastic"):
            topology.resolve(np.ones((2, 2)), 2)

    def test_rejects_unknown_name(self):
        with self.assertRaisesRegex(ValueError, r"Received: name='star'"):
            topology.resolve("star", 4)

    @parameterized.named_parameters(
        ("int", 4, r"topology=4 of type int"),
        ("none", None, r"topology=None of type NoneType"),
        ("dict", {"ring": 4}, r"topology=\{'ring': 4\} of type dict"),
    )
    def test_rejects_other_types(self, spec, message):
        with self.assertRaisesRegex(
            TypeError,
            r"`topology` must be a name \(one of 'ring', .*\), a `Topology`, "
            r"or an array-like of shape \(n, n\) or \(period, n, n\). "
            r"Received: " + message,
        ):
            topology.resolve(spec, 4)

    def test_rejects_bad_num_nodes(self):
        with self.assertRaisesRegex(ValueError, r"Received: num_nodes=0"):
            topology.resolve(topology.ring(1), 0)


if __name__ == "__main__":
    absltest.main()
