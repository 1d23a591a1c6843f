"""AsyncGossipStrategy: argument checks, which need no running cluster.

Every bad argument must be rejected before the strategy starts a server or
connects anywhere, so these tests use unreachable addresses.
"""

import json
import os
from unittest import mock

import numpy as np
import tensorflow as tf

import tf_decentral as tfd
from tf_decentral import strategies
from tf_decentral.strategies.async_gossip import runtime as runtime_lib


def _resolver(num_workers, task_id=0, has_chief=False, task_type="worker"):
    cluster = {"worker": [f"localhost:{1 + k}" for k in range(num_workers)]}
    if has_chief:
        cluster["chief"] = ["localhost:999"]
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
    )


def _without_tf_config():
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return mock.patch.dict(os.environ, env, clear=True)


class ArgumentsTest(tf.test.TestCase):
    def test_needs_a_cluster(self):
        with _without_tf_config():
            with self.assertRaisesRegex(
                ValueError, "Received: cluster_resolver=None"
            ):
                tfd.AsyncGossipStrategy()

    def test_needs_two_workers(self):
        with self.assertRaisesRegex(ValueError, "at least 2 workers") as info:
            tfd.AsyncGossipStrategy(cluster_resolver=_resolver(1))
        self.assertIn(
            "Received: a cluster with 1 worker(s)", str(info.exception)
        )

    def test_one_worker_from_tf_config(self):
        config = {
            "cluster": {"worker": ["localhost:1"]},
            "task": {"type": "worker", "index": 0},
        }
        with mock.patch.dict(os.environ, {"TF_CONFIG": json.dumps(config)}):
            with self.assertRaisesRegex(ValueError, "at least 2 workers"):
                tfd.AsyncGossipStrategy()

    def test_topology_size_must_match(self):
        with self.assertRaisesRegex(ValueError, "num_nodes=3") as info:
            tfd.AsyncGossipStrategy(
                tfd.topology.ring(4), cluster_resolver=_resolver(3)
            )
        self.assertIn("Received: a topology with 4 nodes", str(info.exception))

    def test_topology_must_be_connected(self):
        pair = np.full((2, 2), 0.5)
        zeros = np.zeros((2, 2))
        two_pairs = np.block([[pair, zeros], [zeros, pair]])
        with self.assertRaisesRegex(
            ValueError, "must connect every worker"
        ) as info:
            tfd.AsyncGossipStrategy(two_pairs, cluster_resolver=_resolver(4))
        self.assertIn("workers [0, 1] never exchange", str(info.exception))
        self.assertIn("with workers [2, 3]", str(info.exception))

    def test_unknown_topology_name(self):
        with self.assertRaisesRegex(ValueError, "Received: name='moebius'"):
            tfd.AsyncGossipStrategy("moebius", cluster_resolver=_resolver(3))

    def test_seed_must_be_an_integer(self):
        with self.assertRaisesRegex(TypeError, "Received: seed=0.5"):
            tfd.AsyncGossipStrategy(seed=0.5, cluster_resolver=_resolver(3))

    def test_communication_options_type(self):
        with self.assertRaisesRegex(TypeError, "communication_options"):
            tfd.AsyncGossipStrategy(
                communication_options={"timeout_seconds": 3},
                cluster_resolver=_resolver(3),
            )

    def test_a_timeout_of_zero_is_rejected_not_replaced(self):
        # 0 once became 30 s silently.
        for timeout in (0, -2):
            options = tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=timeout
            )
            with self.assertRaisesRegex(ValueError, "must be a positive"):
                tfd.AsyncGossipStrategy(
                    communication_options=options,
                    cluster_resolver=_resolver(3),
                )

    def test_parameter_servers_do_not_train(self):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(
                {
                    "worker": ["localhost:1", "localhost:2"],
                    "ps": ["localhost:3"],
                }
            ),
            task_type="ps",
            task_id=0,
        )
        with self.assertRaisesRegex(ValueError, "task_type='ps'"):
            tfd.AsyncGossipStrategy(cluster_resolver=resolver)

    def test_active_passive_needs_a_bipartite_topology(self):
        with self.assertRaisesRegex(ValueError, "needs a bipartite topology"):
            tfd.AsyncGossipStrategy(
                "ring", cluster_resolver=_resolver(3), active_passive=True
            )

    def test_active_passive_type(self):
        with self.assertRaisesRegex(TypeError, "active_passive"):
            tfd.AsyncGossipStrategy(
                "ring", cluster_resolver=_resolver(4), active_passive="yes"
            )


class LayoutTest(tf.test.TestCase):
    def test_layout_puts_the_chief_first(self):
        layout = runtime_lib.layout_from_resolver(
            _resolver(2, task_id=1, has_chief=True)
        )
        self.assertEqual(
            layout.nodes, (("chief", 0), ("worker", 0), ("worker", 1))
        )
        self.assertEqual(layout.node, 2)
        self.assertEqual(layout.task(0), "chief:0")
        self.assertEqual(layout.address(0), "localhost:999")
        self.assertEqual(
            layout.server_device(1),
            "/job:worker/replica:0/task:0/device:CPU:0",
        )


class RegistryTest(tf.test.TestCase):
    def test_registry_knows_async_gossip(self):
        self.assertIn("async_gossip", strategies.NAMES)
        with self.assertRaisesRegex(ValueError, "at least 2 workers"):
            strategies.get("async_gossip", cluster_resolver=_resolver(1))

    def test_exported(self):
        self.assertIn("AsyncGossipStrategy", tfd.__all__)
        self.assertIs(tfd.AsyncGossipStrategy, strategies.AsyncGossipStrategy)
        from tf_decentral.strategies.async_gossip import AsyncGossipStrategy

        self.assertIs(AsyncGossipStrategy, tfd.AsyncGossipStrategy)


if __name__ == "__main__":
    tf.test.main()
