"""What the strategies share: errors, options, collective key ranges."""

import collections
import contextlib
import threading
import time
import types

import tensorflow as tf
from absl.testing import parameterized

import tf_decentral as tfd
from tf_decentral import _tf_private
from tf_decentral.cluster import probe
from tf_decentral.ops import neighbor_exchange
from tf_decentral.strategies import _collective


class CollectiveTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("gossip", "allreduce", "mirrored")
    def test_key_bases_of_a_kind_are_distinct_and_in_its_range(self, kind):
        first, second = _collective.key_base(kind), _collective.key_base(kind)
        self.assertGreater(second, first)
        self.assertLess(second, _collective.NEIGHBOR_GROUP_KEY_BASE)

    def test_kinds_do_not_overlap(self):
        bases = {
            kind: _collective.key_base(kind)
            for kind in ("gossip", "allreduce", "mirrored")
        }
        starts = sorted(bases.values())
        for lower, upper in zip(starts, starts[1:]):
            self.assertGreaterEqual(upper - lower, 1_000)

    def test_unknown_kind(self):
        with self.assertRaisesRegex(ValueError, "Received: kind='ps'"):
            _collective.key_base("ps")

    def test_neighbor_keys_are_above_every_strategy_range(self):
        self.assertEqual(
            neighbor_exchange.GROUP_KEY_BASE,
            _collective.NEIGHBOR_GROUP_KEY_BASE,
        )
        self.assertGreater(
            neighbor_exchange.pair_group_key(0, 1, 8),
            _collective.key_base("mirrored"),
        )

    def test_default_options_carry_the_default_timeout(self):
        options = _collective.communication_options(None, 12.0)
        self.assertEqual(options.timeout_seconds, 12.0)
        given = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=3
        )
        self.assertIs(_collective.communication_options(given, 12.0), given)

    @parameterized.parameters(0, -1, 0.0, True)
    def test_timeouts_that_are_not_positive_are_rejected(self, timeout):
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=timeout
        )
        with self.assertRaisesRegex(ValueError, "must be a positive"):
            _collective.communication_options(options, 30.0)

    def test_options_without_a_timeout_get_the_default(self):
        ring = tf.distribute.experimental.CommunicationImplementation.RING
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=ring
        )
        merged = _collective.communication_options(options, 30.0)
        self.assertEqual(merged.timeout_seconds, 30.0)
        self.assertEqual(merged.implementation, ring)

    def test_options_of_the_wrong_type(self):
        with self.assertRaisesRegex(TypeError, "Received: 30"):
            _collective.communication_options(30)

    def test_error_families_extend_the_communication_errors(self):
        for family in (
            _collective.PEER_STATE_LOST_ERRORS,
            _collective.REMOTE_FUNCTION_ERRORS,
        ):
            self.assertEqual(
                family[: len(_collective.COMMUNICATION_ERRORS)],
                _collective.COMMUNICATION_ERRORS,
            )
        self.assertNotIn(
            tf.errors.InvalidArgumentError, _collective.COMMUNICATION_ERRORS
        )


if __name__ == "__main__":
    tf.test.main()


@tf.function(autograph=False)
def _fail_with(x, message):
    tf.debugging.assert_equal(x, 0, message=message)
    return x


class ErrorInterpolationTest(tf.test.TestCase):
    def _message(self, text):
        with self.assertRaises(tf.errors.InvalidArgumentError) as raised:
            _fail_with(tf.constant(1), text)
        return raised.exception.message

    def test_collective_aborts_keep_tfs_message(self):
        # TF rewrites a TF function's error with the failing node's Python
        # stack ("Graph execution error: Detected at node ..."), reading
        # the graph debug info, which crashes after a collective abort.
        # Creating a collective strategy turns that off for such errors.
        _tf_private.skip_error_interpolation_on_collective_aborts()
        for phrase in _tf_private.COLLECTIVE_ABORT_PHRASES:
            message = self._message(f"{phrase} by: a test")
            self.assertNotIn("Graph execution error", message)
            self.assertIn(phrase, message)
        # Other errors keep the stack.
        self.assertIn("Graph execution error", self._message("x is 1"))

    def test_a_collective_strategy_installs_it(self):
        tfd.AllReduceStrategy()
        self.assertNotEmpty(_tf_private._interpolation_patched)


class ExplainLostWorkerTest(tf.test.TestCase):
    """Which worker the message names, with the probe replaced."""

    CLUSTER = {"worker": [f"localhost:{2220 + k}" for k in range(4)]}
    # What worker 2 received when worker 0, TF's coordination service
    # task, exited after its neighbour worker 3 was killed (fault matrix,
    # session 9).
    COORDINATION_ABORT = (
        "Collective ops is aborted by: Failed to send RPC to coordination "
        "service. Additional GRPC error information from remote target "
        "/job:worker/replica:0/task:0 while calling "
        "/tensorflow.CoordinationService/Heartbeat"
    )

    def _explain(self, text, states, peers=(("worker", 1), ("worker", 3))):
        """`states`: address -> state, or a list of such dicts, one per
        probe round (the last one repeats)."""
        probed = []
        rounds = states if isinstance(states, list) else [states]

        def probe_all(addresses):
            probed.extend(addresses)
            now = rounds.pop(0) if len(rounds) > 1 else rounds[0]
            return {a: now.get(a, probe.LISTENING) for a in addresses}

        message = _collective.explain_lost_worker(
            tf.errors.UnavailableError(None, None, text),
            cluster=self.CLUSTER,
            own=("worker", 2),
            what="Gossip training on worker:2",
            timeout=20,
            peers=peers,
            gossip=True,
            probe_all=probe_all,
            pause=0,
        )
        return message, probed

    def test_a_dead_neighbour_is_named_before_the_task_tf_names(self):
        message, probed = self._explain(
            self.COORDINATION_ABORT,
            {"localhost:2223": probe.GONE, "localhost:2220": probe.GONE},
        )
        # The peers and the task TF named were probed, nothing else.
        self.assertEqual(
            sorted(probed),
            ["localhost:2220", "localhost:2221", "localhost:2223"],
        )
        self.assertIn(
            "lost contact with worker:3 (localhost:2223), worker:0 "
            "(localhost:2220): UnavailableError",
            message,
        )
        self.assertIn("Not accepting connections any more", message)
        self.assertIn(
            "gossip neighbours are worker:1 (localhost:2221), worker:3 "
            "(localhost:2223)",
            message,
        )
        self.assertIn("Collective ops is aborted", message)

    def test_without_a_dead_task_tfs_named_task_and_a_hang(self):
        message, _ = self._explain(self.COORDINATION_ABORT, {})
        self.assertIn("lost contact with worker:0 (localhost:2220)", message)
        self.assertIn("Every peer still accepts connections", message)
        self.assertNotIn("Not accepting", message)

    def test_a_reset_connection_is_probed_again_until_the_peer_is_gone(self):
        # TF saw worker 3 reset the connection, but its dying process still
        # held its port at the first probe.
        reset = (
            "Collective ops is aborted by: recvmsg:Connection reset by peer "
            "from remote target /job:worker/replica:0/task:3"
        )
        message, probed = self._explain(
            reset, [{}, {}, {"localhost:2223": probe.GONE}]
        )
        self.assertEqual(len(probed), 3 * 2)  # 3 rounds of 2 peers
        self.assertIn("Not accepting connections any more: worker:3", message)
        # Without such a phrase (a hang), one round only.
        _, probed = self._explain(self.COORDINATION_ABORT, {})
        self.assertLen(probed, 3)

    def test_a_peer_that_does_not_answer_is_named_as_such(self):
        message, _ = self._explain(
            "Collective has timed out", {"localhost:2223": probe.UNKNOWN}
        )
        self.assertIn(
            f"No answer to a connection within {probe.DEFAULT_TIMEOUT:g} s "
            "from: worker:3 (localhost:2223)",
            message,
        )

    def test_nothing_named_nothing_dead(self):
        message, _ = self._explain("Deadline Exceeded", {}, peers=())
        self.assertIn(
            "lost contact with a peer (TF did not say which)", message
        )
        self.assertNotIn("gossip neighbours", message)
        # This task itself is never a culprit, even when TF names it.
        message, probed = self._explain(
            "from /job:worker/replica:0/task:2", {}, peers=()
        )
        self.assertEqual(probed, [])
        self.assertIn("a peer (TF did not say which)", message)


class StepWatchdogTest(tf.test.TestCase):
    def _watchdog(self, timeout):
        aborts = []
        self.enter_context(
            tf.compat.v1.test.mock.patch.object(
                _tf_private, "abort_collective_ops", aborts.append
            )
        )
        return _collective.StepWatchdog(timeout, "the step of w:1"), aborts

    def test_a_step_longer_than_the_timeout_aborts_the_collectives(self):
        watchdog, aborts = self._watchdog(0.2)
        with watchdog.step():
            time.sleep(0.6)
        self.assertEqual(watchdog.fired, 1)
        self.assertLen(aborts, 1)
        # TF's own timeout says this; explain_lost_worker looks for it.
        self.assertStartsWith(
            aborts[0], "Collective has timed out during execution: the step"
        )
        self.assertIn("0.2 s per step", aborts[0])

    def test_an_execution_of_several_steps_has_a_timeout_per_step(self):
        watchdog, aborts = self._watchdog(0.2)
        with watchdog.step(steps=4):  # 0.8 s for a call of 4 steps
            time.sleep(0.5)
        self.assertEqual(aborts, [])
        with watchdog.step(steps=2):
            time.sleep(0.7)
        self.assertLen(aborts, 1)

    def test_steps_within_the_timeout_never_abort(self):
        watchdog, aborts = self._watchdog(0.3)
        for _ in range(5):  # 1 s in all, each step 0.2 s
            with watchdog.step():
                time.sleep(0.2)
        time.sleep(0.4)  # idle between steps: not timed
        self.assertEqual(aborts, [])
        # Nested steps count once: the outermost.
        with watchdog.step():
            with watchdog.step():
                time.sleep(0.1)
        self.assertEqual(aborts, [])

    def test_no_timeout_no_thread(self):
        watchdog, aborts = self._watchdog(None)
        with watchdog.step():
            time.sleep(0.05)
        self.assertIsNone(watchdog._thread)
        self.assertEqual(aborts, [])


class WatchedKerasStepTest(tf.test.TestCase):
    class _Extended(_collective.WatchedKerasStep):
        def __init__(self, timeout):
            self.hook_counts = collections.Counter()
            self.options_entered = 0
            self.init_watched_step(timeout, "the step of w:1")

        @contextlib.contextmanager
        def keras_step_options(self):
            self.options_entered += 1
            yield

    def _train_function(self, extended, seen):
        def train_function(x):
            seen.append((extended.in_keras_step, extended.watchdog._deadline))
            return x + 1

        return train_function

    def test_every_call_runs_in_the_step_under_the_watchdog(self):
        extended = self._Extended(timeout=30.0)
        model = types.SimpleNamespace(steps_per_execution=4)
        seen = []
        wrapped = extended.keras_wrap_train_function(
            model, self._train_function(extended, seen)
        )
        self.assertFalse(extended.in_keras_step)
        start = time.monotonic()
        self.assertEqual(wrapped(1), 2)
        self.assertEqual(wrapped(2), 3)
        self.assertEqual(extended.hook_counts["watched_steps"], 2)
        self.assertEqual(extended.options_entered, 2)
        for in_step, deadline in seen:
            self.assertTrue(in_step)
            # A call of 4 steps has 4 x the timeout.
            self.assertBetween(deadline - start, 110.0, 121.0)
        self.assertFalse(extended.in_keras_step)
        self.assertIsNone(extended.watchdog._deadline)

    def test_in_keras_step_is_per_thread_and_reset_by_an_error(self):
        extended = self._Extended(timeout=None)
        other = []

        def train_function():
            thread = threading.Thread(
                target=lambda: other.append(extended.in_keras_step)
            )
            thread.start()
            thread.join()
            raise ValueError("from the step")

        wrapped = extended.keras_wrap_train_function(None, train_function)
        with self.assertRaisesRegex(ValueError, "from the step"):
            wrapped()
        self.assertEqual(other, [False])
        self.assertFalse(extended.in_keras_step)
