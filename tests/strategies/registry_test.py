"""`tf_decentral.strategies.get`: names -> strategies, for flags."""

import tensorflow as tf
from absl.testing import parameterized

import tf_decentral as tfd


class RegistryTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("gossip", "gossip", {"topology": "ring"}, "GossipStrategy"),
        ("mirrored", "mirrored", {"devices": ["CPU:0", "CPU:1"]}, "Mirrored"),
        ("allreduce", "allreduce", {}, "AllReduceStrategy"),
    )
    def test_get_builds_the_named_strategy(self, name, options, class_name):
        strategy = tfd.strategies.get(name, **options)
        self.assertIn(class_name, type(strategy).__name__)
        self.assertIsInstance(strategy, tf.distribute.Strategy)

    def test_every_name_is_known(self):
        self.assertEqual(
            set(tfd.strategies.NAMES),
            {"gossip", "async_gossip", "downpour", "allreduce", "mirrored"},
        )

    def test_unknown_name_says_what_is_known(self):
        with self.assertRaisesRegex(ValueError, "Received: 'gosip'"):
            tfd.strategies.get("gosip")

    def test_options_reach_the_constructor(self):
        strategy = tfd.strategies.get("gossip", topology="complete")
        self.assertEqual(strategy.topology.name, "complete")

    def test_two_mirrored_strategies_of_different_sizes_coexist(self):
        # Stock MirroredStrategy instances share collective group keys and
        # clash ("joining a group with size 2, but that group has size 4").
        four, two = ["CPU:0", "CPU:1", "CPU:2", "CPU:3"], ["CPU:0", "CPU:1"]
        for devices in (four, two):
            strategy = tfd.strategies.get("mirrored", devices=devices)

            @tf.function
            def step(strategy=strategy):
                ctx = tf.distribute.get_replica_context()
                return ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0)

            result = strategy.experimental_local_results(strategy.run(step))
            self.assertAllClose(result[0], float(len(devices)))


if __name__ == "__main__":
    tf.test.main()
