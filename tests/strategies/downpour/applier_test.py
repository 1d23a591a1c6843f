"""The applier's records queue (`applier.py`): drained in bulk, woken."""

import threading

import tensorflow as tf

from tf_decentral.strategies.downpour import applier as applier_lib


def _record(push_id, worker, staleness, fresh):
    return [
        tf.constant(push_id, tf.int64),
        tf.constant(worker, tf.int64),
        tf.constant(staleness, tf.int64),
        tf.constant(fresh),
    ]


class RecordsTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.applier = applier_lib.Applier(
            "/cpu:0",
            f"applier_test/{self.id()}",
            targets=[],
            process=None,
            num_workers=2,
        )

    def test_drain_takes_everything_queued_without_waiting(self):
        self.assertEqual(self.applier.drain()["push_id"].tolist(), [])
        self.applier.records.enqueue(_record(7, 1, 2, True))
        self.applier.records.enqueue(_record(8, 0, 0, False))
        records = self.applier.drain()
        self.assertEqual(records["push_id"].tolist(), [7, 8])
        self.assertEqual(records["worker"].tolist(), [1, 0])
        self.assertEqual(records["staleness"].tolist(), [2, 0])
        self.assertEqual(records["fresh"].tolist(), [True, False])
        self.assertEqual(self.applier.drain()["push_id"].tolist(), [])

    def test_a_blocked_drain_returns_with_the_first_record(self):
        got = {}
        thread = threading.Thread(
            target=lambda: got.update(self.applier.drain(block=True))
        )
        thread.start()
        thread.join(0.5)
        self.assertTrue(thread.is_alive())  # nothing queued: it waits
        self.applier.records.enqueue(_record(3, 1, 1, True))
        thread.join(60)
        self.assertFalse(thread.is_alive())
        self.assertEqual(got["push_id"].tolist(), [3])

    def test_wake_ends_a_blocked_drain_with_no_record(self):
        checks = []

        def stop_waiting():
            checks.append(True)
            return len(checks) >= 2  # e.g. every closure has finished

        records = self.applier.wait(
            lambda: self.applier.drain(block=True), stop_waiting
        )
        self.assertEqual(records["push_id"].tolist(), [])
        self.assertLen(checks, 2)

    def test_a_failing_stop_check_wakes_the_drain_and_raises(self):
        def stop_waiting():
            raise tf.errors.AbortedError(None, None, "a closure failed")

        with self.assertRaisesRegex(tf.errors.AbortedError, "closure failed"):
            self.applier.wait(
                lambda: self.applier.drain(block=True), stop_waiting
            )
        # The wake record ended the blocked drain; it is not a push.
        self.assertEqual(self.applier.drain()["push_id"].tolist(), [])


if __name__ == "__main__":
    tf.test.main()
