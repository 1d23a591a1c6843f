"""A test-only gate that holds one push between its claim and its apply.

`install(release_file, every)` wraps two methods of `ParameterServerState`
(in this process only, before the model traces its closures): `push`
records which worker sends each push id, and `_claim` (after recording the
claim) holds the first push of worker 1 claimed once the gate is armed whose
id is a multiple of `every` (with closures of `every` pushes, a closure's
first push: one its worker waits for, when the closure fetches again after
it), spinning on ps task 0 until the chief releases it. The production
code has no test branch: the gate lives in the traced graph of this test's
chief.

The chief arms the gate (`arm()`, e.g. at the end of the first epoch); a
thread prints `HELD {"push": id}` once a push is held, waits until the test
created the file `release_file` (after killing worker 1), waits a moment
more for the kill to take effect on the ps tasks, then releases the push.

With pushes at most once (claim and apply in the dead worker's closure) the
held push is lost; with exactly-once pushes it is applied and its closure's
re-run is counted as a duplicate.
"""

import json
import os
import threading
import time

import tensorflow as tf

from tf_decentral.strategies.downpour import placement
from tf_decentral.strategies.downpour import ps as ps_lib

OPEN, ARMED, HOLDING, RELEASED = 0, 1, 2, 3
HELD_WORKER = 1
_RING = 4096
# Seconds between the release file and the release: the killed worker's
# calls on the ps tasks are cancelled within a fraction of a second.
_AFTER_KILL_SECONDS = 1.0


class Gate:
    """The gate's variables on ps task 0 and its chief-side thread."""

    def __init__(self, release_file, every=1):
        self.release_file = release_file
        self.every = every
        with tf.device(placement.ps_device(0)):
            self.state = tf.Variable(OPEN, dtype=tf.int64, name="gate_state")
            self.held = tf.Variable(-1, dtype=tf.int64, name="gate_held")
            self.pushers = tf.Variable(
                tf.fill([_RING], tf.constant(-1, tf.int64)), name="gate_pushers"
            )

    def arm(self):
        self.state.assign(ARMED)
        threading.Thread(target=self._release, daemon=True).start()

    def _release(self):
        while int(self.state.numpy()) != HOLDING:
            time.sleep(0.02)
        print(
            "HELD " + json.dumps({"push": int(self.held.numpy())}), flush=True
        )
        while not os.path.exists(self.release_file):
            time.sleep(0.02)
        time.sleep(_AFTER_KILL_SECONDS)
        self.state.assign(RELEASED)

    def note_pusher(self, push_id):
        """Records the current worker as the sender of `push_id`."""
        worker = (
            tf.distribute.coordinator.experimental_get_current_worker_index()
        )
        with tf.device(placement.ps_device(0)):
            return self.pushers.scatter_nd_update(
                tf.reshape(tf.math.floormod(push_id, _RING), [1, 1]),
                tf.reshape(tf.cast(worker, tf.int64), [1]),
            )

    def hold(self, push_id, fresh):
        """Returns `fresh`, after holding the push if the gate takes it."""
        with tf.device(placement.ps_device(0)):
            slot = tf.math.floormod(push_id, _RING)
            takes = tf.logical_and(
                tf.logical_and(
                    tf.equal(self.state.read_value(), ARMED),
                    tf.equal(self.pushers.sparse_read(slot), HELD_WORKER),
                ),
                tf.equal(tf.math.floormod(push_id, self.every), 0),
            )

            def spin():
                taken = [self.state.assign(HOLDING), self.held.assign(push_id)]
                with tf.control_dependencies(taken):
                    return tf.while_loop(
                        lambda f: tf.equal(self.state.read_value(), HOLDING),
                        tf.identity,
                        [tf.identity(fresh)],
                    )[0]

            return tf.cond(takes, spin, lambda: tf.identity(fresh))


def install(release_file, every=1):
    """Wraps `push` and `_claim`; returns the `Gate` (call `arm()`)."""
    gate = Gate(release_file, every)
    push = ps_lib.ParameterServerState.push
    claim = ps_lib.ParameterServerState._claim

    def noting_push(self, grads, fetched_clock, push_id, *args):
        with tf.control_dependencies([gate.note_pusher(push_id)]):
            grads = [None if g is None else tf.identity(g) for g in grads]
        return push(self, grads, fetched_clock, push_id, *args)

    def holding_claim(self, push_id):
        return gate.hold(push_id, claim(self, push_id))

    ps_lib.ParameterServerState.push = noting_push
    ps_lib.ParameterServerState._claim = holding_claim
    return gate
