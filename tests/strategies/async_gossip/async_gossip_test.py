"""AsyncGossipStrategy: argument checks, which need no running cluster.

Every bad argument must be rejected before the strategy starts a server or
connects anywhere, so these tests use unreachable addresses.
"""

import collections
import json
import os
from unittest import mock

import numpy as np
import tensorflow as tf

import tf_decentral as tfd
from tf_decentral import strategies
from tf_decentral import topology
from tf_decentral.strategies.async_gossip import pacing as pacing_lib
from tf_decentral.strategies.async_gossip import peers as peers_lib
from tf_decentral.strategies.async_gossip import runtime as runtime_lib
from tf_decentral.strategies.async_gossip import strategy as strategy_lib


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

    def test_overlap_type(self):
        with self.assertRaisesRegex(TypeError, "Received: overlap=1"):
            tfd.AsyncGossipStrategy(
                "ring", cluster_resolver=_resolver(4), overlap=1
            )


class SplitScheduleTest(tf.test.TestCase):
    def test_even_ring(self):
        # Ring of 8: actives 0, 2, 4, 6. In a round, the actives' partners
        # are distinct (a matching), and each passive expects 1/2 exchange
        # per step from each of its two active neighbours.
        edges = topology.adjacency(topology.ring(8))
        rounds = {
            node: strategy_lib._split_schedule(edges, node, True)[0]
            for node in (0, 2, 4, 6)
        }
        for r in range(2):
            partners = [rounds[node][r] for node in (0, 2, 4, 6)]
            self.assertLen(set(partners), 4, rounds)
            self.assertTrue(all(p % 2 == 1 for p in partners), rounds)
        _, shares = strategy_lib._split_schedule(edges, 1, True)
        self.assertEqual(shares, {0: 0.5, 2: 0.5})

    def test_uneven_degrees(self):
        # A path 0 - 1 - 2 - 3: passive 1 has actives 0 (degree 1) and 2
        # (degree 2): 1 and 1/2 exchanges per step of theirs.
        edges = np.zeros((4, 4), dtype=bool)
        for i in range(3):
            edges[i, i + 1] = edges[i + 1, i] = True
        shares = strategy_lib._split_schedule(edges, 1, True)[1]
        self.assertEqual(shares, {0: 1.0, 2: 0.5})
        rounds = strategy_lib._split_schedule(edges, 0, True)[0]
        self.assertCountEqual(rounds, [1, None])

    def test_no_split(self):
        edges = topology.adjacency(topology.ring(5))
        self.assertEqual(
            strategy_lib._split_schedule(edges, 0, False), (None, None)
        )


class _FakeLocks:
    """`served_count` grows by one every `every` reads (the actives'
    exchanges); `read_training(j)` answers `(training[j], steps[j])` (an
    exception instance is raised), and a training peer takes one more step
    per read of it."""

    def __init__(self, training, every=1, steps=None):
        self.training = training
        self.every = every
        self.reads = 0
        self.steps = dict(steps or {})
        self.serving = False

    def served_count(self):
        self.reads += 1
        return self.reads // self.every

    def set_serving(self):
        self.serving = True

    def read_training(self, k):
        if isinstance(self.training[k], Exception):
            raise self.training[k]
        steps = self.steps.get(k, 0)
        if self.training[k]:
            self.steps[k] = steps + 1
        return self.training[k], steps


class _Pacer(pacing_lib.PacingMixin):
    """The pacing of a passive worker, on fake locks."""

    def __init__(self, locks):
        self.locks = locks
        self.schedule = peers_lib.PeerSchedule((0, 2), active=False)
        self.serve_shares = {0: 0.5, 2: 0.5}
        self.stats = collections.Counter()
        self.timeout = 30.0
        self._pacing = True
        self._rebase_pace({0, 2}, 0)

    def drop(self, peer, error):
        self.schedule.drop(peer, str(error))


class _Finisher(pacing_lib.PacingMixin):
    """The end of an all-active worker's fit, on fake locks."""

    def __init__(self, locks, steps_in_all):
        self.locks = locks
        self.schedule = peers_lib.PeerSchedule((0, 2))
        self.stats = collections.Counter()
        self.timeout = 30.0
        self._pacing = False
        self._steps_in_all = steps_in_all

    def drop(self, peer, error):
        self.schedule.drop(peer, str(error))


@mock.patch.object(pacing_lib, "_PACE_CHECK_SECONDS", 0.0)
class ServeAtEndTest(tf.test.TestCase):
    def test_serves_while_a_training_neighbour_has_fewer_steps(self):
        # Worker 0 trains, 4 steps behind; worker 2 trains, ahead.
        locks = _FakeLocks({0: True, 2: True}, steps={0: 6, 2: 12})
        finisher = _Finisher(locks, steps_in_all=10)
        finisher.serve_at_end()
        self.assertTrue(locks.serving)
        self.assertEqual(locks.steps[0], 11)  # read at 6, 7, 8, 9 and 10
        self.assertEqual(finisher.stats["waited_at_end"], 1)

    def test_no_wait_for_a_neighbour_ahead_or_not_training(self):
        locks = _FakeLocks({0: False, 2: True}, steps={0: 3, 2: 10})
        finisher = _Finisher(locks, steps_in_all=10)
        finisher.serve_at_end()
        self.assertEqual(locks.steps, {0: 3, 2: 11})  # each read once
        self.assertEqual(finisher.stats["waited_at_end"], 1)

    def test_a_neighbour_that_does_not_answer_is_dropped(self):
        gone = tf.errors.UnavailableError(None, None, "connection refused")
        locks = _FakeLocks({0: gone, 2: False})
        finisher = _Finisher(locks, steps_in_all=10)
        finisher.serve_at_end()
        self.assertEqual(list(finisher.schedule.dropped), [0])


@mock.patch.object(pacing_lib, "_PACE_POLL_SECONDS", 0.0)
class PaceTest(tf.test.TestCase):
    def test_waits_until_served_about_once_per_step(self):
        locks = _FakeLocks({0: True, 2: True})
        pacer = _Pacer(locks)  # its baseline read served 1
        pacer.pace(10)
        # 10 steps, 4 ahead at most: it returned once served reached 6.
        self.assertEqual(locks.reads - 1, 6)
        self.assertEqual(pacer.stats["paced"], 1)
        pacer.pace(11)
        self.assertEqual(locks.reads - 1, 7)

    def test_no_wait_within_the_lead(self):
        locks = _FakeLocks({0: True, 2: True})
        pacer = _Pacer(locks)
        for steps in range(1, 5):
            pacer.pace(steps)
        self.assertEqual(pacer.stats["paced"], 0)

    @mock.patch.object(pacing_lib, "_PACE_CHECK_SECONDS", 0.0)
    def test_a_neighbour_that_stopped_training_is_no_longer_expected(self):
        # Served grows slowly; worker 2's fit has ended: from the check on,
        # only worker 0's half exchange per step is expected.
        locks = _FakeLocks({0: True, 2: False}, every=1000)
        pacer = _Pacer(locks)
        pacer.pace(10)
        self.assertEqual(pacer._pace_peers, {0})
        self.assertEqual(pacer._pace_rate, 0.5)
        self.assertEqual(pacer._pace_base[1], 9)
        self.assertTrue(pacer._pacing)

    @mock.patch.object(pacing_lib, "_PACE_CHECK_SECONDS", 0.0)
    def test_stops_pacing_when_no_neighbour_trains(self):
        gone = tf.errors.UnavailableError(None, None, "connection refused")
        locks = _FakeLocks({0: False, 2: gone}, every=1000)
        pacer = _Pacer(locks)
        pacer.pace(10)
        self.assertFalse(pacer._pacing)
        self.assertEqual(list(pacer.schedule.dropped), [2])

    def test_gives_up_at_the_timeout(self):
        locks = _FakeLocks({0: True, 2: True}, every=10**9)
        pacer = _Pacer(locks)
        pacer.timeout = 0.01
        pacer.pace(10)
        self.assertEqual(pacer.stats["pace_timeouts"], 1)


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
