"""The chief side of Downpour (`driver.py`) that needs no cluster."""

import itertools
import types

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tf_decentral.strategies import downpour
from tf_decentral.strategies.downpour import config
from tf_decentral.strategies.downpour import driver
from tf_decentral.strategies.downpour import stats
from tf_decentral.testing import cluster


def _config(**kwargs):
    arguments = {
        "n_fetch": 1,
        "n_push": 1,
        "protocol": "async",
        "softsync_n": None,
        "staleness_lr": False,
        "warm_start_steps": 0,
        "options": downpour.DownpourOptions(),
        "num_workers": 3,
        **kwargs,
    }
    return config.RunConfig(**arguments)


class RunConfigTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (1, 1, 1, 1),
        (2, 1, 2, 2),
        (2, 3, 6, 2),
        (4, 4, 4, 1),
    )
    def test_closure_length_and_pushes(self, n_fetch, n_push, steps, pushes):
        config = _config(n_fetch=n_fetch, n_push=n_push)
        self.assertEqual(config.steps_per_closure, steps)
        self.assertEqual(config.max_pushes, pushes)

    @parameterized.parameters(
        ("async", 1, 1, 1, 1),
        ("async", 1, 4, 4, 4),
        ("async", 2, 3, 4, 4),  # a multiple of lcm(n_fetch, n_push) = 2
        ("softsync", 3, 7, 9, 9),
        ("sync", 2, 4, 2, 2),  # a round needs every worker's push
    )
    def test_steps_per_execution_lengthens_closures(
        self, protocol, n_fetch, spe, steps, pushes
    ):
        config = _config(
            protocol=protocol,
            softsync_n=2 if protocol == "softsync" else None,
            n_fetch=n_fetch,
        )
        self.assertEqual(config.closure_steps(spe), steps)
        self.assertEqual(config.pushes_per_closure(spe), pushes)
        self.assertGreater(
            config.ring_size_for(spe),
            pushes * (config.max_inflight + config.num_workers + 1),
        )

    @parameterized.parameters(
        ("async", None, 1),
        ("softsync", 2, 2),
        ("sync", None, 3),
    )
    def test_required_pushes(self, protocol, softsync_n, required):
        config = _config(protocol=protocol, softsync_n=softsync_n)
        self.assertEqual(config.required_pushes, required)

    def test_push_id_ring_outlasts_every_closure_in_flight(self):
        config = _config(
            n_fetch=4,
            options=downpour.DownpourOptions(max_inflight_per_worker=5),
        )
        self.assertEqual(config.max_inflight, 15)
        in_flight = config.max_pushes * (config.max_inflight + 3 + 1)
        self.assertGreater(config.ring_size, in_flight)
        self.assertEqual(_config().ring_size, 64)


class ExplainTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        tf.errors.UnavailableError,
        tf.errors.AbortedError,
        tf.errors.UnknownError,
    )
    def test_a_lost_ps_gets_a_clear_message(self, error_type):
        error = error_type(
            None, None, "Socket closed\n/job:ps/replica:0/task:1 is down"
        )
        clearer = driver.explain(error)
        self.assertIsInstance(clearer, error_type)
        self.assertIn("lost parameter server ps:1", clearer.message)
        self.assertIn("Socket closed", clearer.message)
        self.assertIn("BackupAndRestore", clearer.message)

    def test_other_errors_pass_through(self):
        worker = tf.errors.UnavailableError(
            None, None, "/job:worker/replica:0/task:0 is down"
        )
        self.assertIsNone(driver.explain(worker))
        bug = tf.errors.InvalidArgumentError(
            None, None, "/job:ps/replica:0/task:0: shapes differ"
        )
        self.assertIsNone(driver.explain(bug))
        self.assertIsNone(driver.explain(ValueError("/job:ps/task:0")))

    def test_an_error_naming_no_task_is_a_lost_ps_that_refuses(self):
        import socket

        listening = socket.create_server(("localhost", 0))
        self.addCleanup(listening.close)
        alive = f"localhost:{listening.getsockname()[1]}"
        dead = f"localhost:{cluster.pick_ports(1)[0]}"
        error = tf.errors.UnavailableError(
            None, None, "RemoteExecuteNode::RunAsync [Op:__inference_f_1]"
        )
        clearer = driver.explain(error, ps_addresses=(alive, dead))
        self.assertIn("lost parameter server ps:1", clearer.message)
        self.assertIn("RemoteExecuteNode::RunAsync", clearer.message)
        # Every ps answers: not a lost ps, the error passes through.
        self.assertIsNone(driver.explain(error, ps_addresses=(alive,)))
        self.assertIsNone(driver.explain(error))

    def test_explained_reraises_only_ps_failures(self):
        with self.assertRaisesRegex(
            tf.errors.UnavailableError, "lost parameter server ps:0"
        ):
            with driver.explain_errors():
                raise tf.errors.UnavailableError(
                    None, None, "/job:ps/replica:0/task:0 unreachable"
                )
        with self.assertRaisesRegex(ValueError, "a bug"):
            with driver.explain_errors():
                raise ValueError("a bug")


if __name__ == "__main__":
    tf.test.main()


class _Cluster:
    """A coordinator, applier and closure builder in one fake: every
    closure finishes at once and its push is applied, except the `slow`
    ones, which run until `finish` is called."""

    def __init__(self, slow):
        self.slow = set(slow)
        self.scheduled = []
        self.applied = []  # Records not drained yet: push ids.
        self.drains = 0  # Round trips to ps task 0.
        self.blocking_drains = 0  # Drains that had to wait for a push.
        self.running = True

    # ClusterCoordinator
    def schedule(self, function, args):
        del function
        closure_id = int(args[1])
        self.scheduled.append(closure_id)
        if closure_id not in self.slow:
            self.applied.append(closure_id)

    def done(self):
        return not self.slow

    def finish(self, closure_id):
        self.slow.discard(closure_id)
        self.applied.append(closure_id)

    # Applier
    def start(self):
        pass

    def wait(self, blocking, stop_waiting=None):
        del stop_waiting
        return blocking()

    def drain(self, block=False):
        self.drains += 1
        if block and not self.applied:
            # A real drain would wait: finish one.
            self.blocking_drains += 1
            self.finish(min(self.slow))
        ids, self.applied = self.applied, []
        return {
            "push_id": np.array(ids, np.int64),
            "worker": np.zeros(len(ids), np.int64),
            "staleness": np.ones(len(ids), np.int64),
            "fresh": np.ones(len(ids), bool),
        }

    # ClosureBuilder
    def function(self, num_steps):
        return num_steps

    def pushes(self, num_steps):
        return num_steps


class FlowControlTest(tf.test.TestCase):
    def _train_function(self, fake, max_inflight_per_worker=2):
        config = _config(
            num_workers=2,
            options=downpour.DownpourOptions(
                max_inflight_per_worker=max_inflight_per_worker
            ),
        )
        extended = types.SimpleNamespace(
            config=config,
            coordinator=fake,
            push_stats=stats.PushStats(),
            new_closure_id=itertools.count(1).__next__,
            warm_steps_left=lambda: 0,
        )
        function = driver.TrainFunction(extended, model=None)
        function.state = types.SimpleNamespace(applier=fake)
        function.builder = fake
        function.closure_steps, function.max_pushes = 1, 1
        return function

    def test_a_slow_closure_holds_up_nothing_but_itself(self):
        # Closure 1 is slow; at most 4 pushes may be in flight. The chief
        # schedules the other 9 as their pushes are applied, never waiting,
        # and reads the applied pushes only when it reaches the limit (then
        # down to half of it): 2 round trips to ps task 0 for 10 closures,
        # not one per closure.
        fake = _Cluster(slow=[1])
        function = self._train_function(fake)
        for _ in range(10):
            function._pending_steps += 1
            function._dispatch(final=False)
        self.assertEqual(fake.scheduled, list(range(1, 11)))
        self.assertEqual(fake.blocking_drains, 0)
        self.assertEqual(fake.drains, 2)
        self.assertLen(fake.slow, 1)
        counted = [r.closure for r in function.extended.push_stats.records()]
        self.assertEqual(counted, list(range(2, 10)))
        # Closure 10's record waits for the next read (the logs' or the
        # epoch's end).
        function._collect()
        counted = [r.closure for r in function.extended.push_stats.records()]
        self.assertEqual(counted, list(range(2, 11)))

    def test_the_chief_waits_when_too_many_pushes_are_in_flight(self):
        fake = _Cluster(slow=range(1, 7))
        function = self._train_function(fake, max_inflight_per_worker=1)
        for _ in range(6):
            function._pending_steps += 1
            function._dispatch(final=False)
        # Limit 2 (1 per worker): after the 3rd and the 5th slow closure
        # the chief waited until half the limit, 1 push, was in flight:
        # two pushes applied each time.
        self.assertEqual(fake.blocking_drains, 4)
        self.assertEqual(fake.scheduled, list(range(1, 7)))
