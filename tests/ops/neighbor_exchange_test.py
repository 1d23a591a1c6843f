"""Tests of the pure parts of `tf_decentral.ops.neighbor_exchange`.

The exchange itself needs a cluster of TF servers: see
`tests/strategies/gossip/gossip_multiprocess_test.py`.
"""

import itertools

import tensorflow as tf
from absl.testing import parameterized

from tf_decentral import topology as topo
from tf_decentral.ops import neighbor_exchange
from tf_decentral.strategies import _collective

SIZES = (2, 3, 4, 8, 16)
SLOTS = 3


class PairGroupKeyTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*SIZES)
    def test_symmetric(self, n):
        for a, b in itertools.permutations(range(n), 2):
            self.assertEqual(
                neighbor_exchange.pair_group_key(a, b, n),
                neighbor_exchange.pair_group_key(b, a, n),
            )

    @parameterized.parameters(*SIZES)
    def test_distinct_per_pair(self, n):
        keys = [
            neighbor_exchange.pair_group_key(a, b, n)
            for a, b in itertools.combinations(range(n), 2)
        ]
        self.assertLen(set(keys), n * (n - 1) // 2)

    @parameterized.parameters(*SIZES)
    def test_within_the_neighbour_group_range(self, n):
        for a, b in itertools.combinations(range(n), 2):
            key = neighbor_exchange.pair_group_key(a, b, n)
            self.assertGreaterEqual(key, _collective.NEIGHBOR_GROUP_KEY_BASE)
            self.assertLess(key, _collective.NEIGHBOR_INSTANCE_KEY_BASE)
            # Far above every strategy's own groups.
            self.assertGreater(key, _collective.key_base("gossip") + 10_000)


class EdgeInstanceKeyTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*SIZES)
    def test_distinct_per_direction_and_slot(self, n):
        keys = [
            neighbor_exchange.edge_instance_key(src, dst, n, slot)
            for src, dst in itertools.permutations(range(n), 2)
            for slot in range(SLOTS)
        ]
        self.assertLen(set(keys), n * (n - 1) * SLOTS)

    def test_directions_differ(self):
        self.assertNotEqual(
            neighbor_exchange.edge_instance_key(1, 2, 4, 0),
            neighbor_exchange.edge_instance_key(2, 1, 4, 0),
        )

    @parameterized.parameters(*SIZES)
    def test_within_the_neighbour_instance_range(self, n):
        for src, dst in itertools.permutations(range(n), 2):
            for slot in range(SLOTS):
                key = neighbor_exchange.edge_instance_key(src, dst, n, slot)
                self.assertGreaterEqual(
                    key, _collective.NEIGHBOR_INSTANCE_KEY_BASE
                )


class GossipRoundTest(tf.test.TestCase):
    def test_rejects_buffer_that_is_not_1d(self):
        with self.assertRaisesRegex(ValueError, "1-D.*Received: shape"):
            neighbor_exchange.gossip_round(
                tf.zeros((2, 3)), topo.ring(4), node=0
            )


if __name__ == "__main__":
    tf.test.main()
