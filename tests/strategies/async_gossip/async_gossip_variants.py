"""Test-side variants of AD-PSGD's exchange (imported by the worker).

* `swap`, `slowed`: pairwise steps to inject with `SharedModel(combine=...)`.
* `UnlockedLocks`: `Locks` whose critical sections take no lock and no
  lease, and that force the interleaving the locks exist to prevent.
* `try_acquire`: takes a node's lease, as an exchange does, from the public
  pieces of `Locks` (the kill test holds a peer's lease with it).
"""

import tensorflow as tf

from tf_decentral.strategies.async_gossip import exchange


def _read(handle, dtype):
    return tf.raw_ops.ReadVariableOp(resource=handle, dtype=dtype)


def _assign(handle, value):
    return tf.raw_ops.AssignVariableOp(resource=handle, value=value)


def swap(x_i, x_j):
    """`x_i <- x_j + 1, x_j <- x_i - 1`: conserves the sum of the copies and
    never converges, so any exchange that is not atomic changes the sum."""
    return (
        [b + tf.ones_like(b) for b in x_j],
        [a - tf.ones_like(a) for a in x_i],
    )


def slowed(combine, matmuls):
    """Returns `combine` after `matmuls` chained 96x96 matmuls on the peer's
    server, to widen the race windows of an exchange."""

    def slow_combine(x_i, x_j):
        seed = tf.reduce_sum(x_i[0][:1]) * 0.0
        block = tf.fill([96, 96], 0.01) + tf.cast(seed, tf.float32)
        _, block = tf.while_loop(
            lambda n, _: n < matmuls,
            lambda n, b: (n + 1, tf.tanh(tf.matmul(b, b))),
            [tf.constant(0), block],
        )
        zero = tf.reduce_sum(block) * 0.0
        return combine([a + tf.cast(zero, a.dtype) for a in x_i], x_j)

    return slow_combine


class UnlockedLocks(exchange.Locks):
    """`Locks` without locks, forcing the worst interleaving.

    Nothing is locked and no lease is taken: every exchange goes through.
    On top of that, the combine step of an exchange with node `k` waits (on
    `k`'s server, at most `wait_seconds`) until `k`'s own exchange of the
    same round has read `x_k`: when every worker starts one exchange per
    round, every exchange reads its copy before any peer writes it, so a
    peer's write to `x_k` is later overwritten by `k`'s own (a lost update).
    """

    def __init__(self, layout, lease_seconds, wait_seconds=20.0):
        super().__init__(layout, lease_seconds)
        self.wait_seconds = float(wait_seconds)
        self.reads = []
        for k in range(layout.num_nodes):
            with tf.device(layout.server_device(k)):
                self.reads.append(
                    tf.raw_ops.VarHandleOp(
                        dtype=tf.int64,
                        shape=[],
                        container="",
                        shared_name="tests/unlocked_reads",
                    )
                )
        with tf.device(layout.server_device(layout.node)):
            _assign(self.reads[layout.node], tf.constant(0, tf.int64))

    def acquire_read(self, k, token, handles, dtypes):
        del token
        with tf.device(self.layout.server_device(k)):
            copy = [_read(h, d) for h, d in zip(handles, dtypes)]
            with tf.control_dependencies(copy):
                counted = tf.raw_ops.AssignAddVariableOp(
                    resource=self.reads[k], value=tf.constant(1, tf.int64)
                )
            with tf.control_dependencies([counted]):
                return [tf.constant(True), *[tf.identity(c) for c in copy]]

    def combine_passive(self, k, handles, dtypes, incoming, go, combine):
        del go
        with tf.device(self.layout.server_device(k)):
            # This round's exchange of k's own has read x_k when k's reads
            # exceed the exchanges k has served so far.
            target = _read(self.served[k], tf.int64) + 1
            deadline = tf.timestamp() + self.wait_seconds
            (waited,) = tf.while_loop(
                lambda n: tf.logical_and(
                    _read(self.reads[k], tf.int64) < target,
                    tf.timestamp() < deadline,
                ),
                lambda n: n + 1,
                [tf.constant(0, tf.int64)],
            )
            with tf.control_dependencies([waited]):
                current = [_read(h, d) for h, d in zip(handles, dtypes)]
            new_i, new_k = combine(incoming, current)
            writes = [_assign(h, v) for h, v in zip(handles, new_k)]
            writes.append(
                tf.raw_ops.AssignAddVariableOp(
                    resource=self.served[k], value=tf.constant(1, tf.int64)
                )
            )
            with tf.control_dependencies(writes):
                new_i = [tf.identity(v) for v in new_i]
                return [tf.constant(True), tf.constant(False), *new_i]

    def write_release(self, k, handles, values, token, do_write):
        del token, do_write
        with tf.device(self.layout.server_device(k)):
            writes = [_assign(h, v) for h, v in zip(handles, values)]
            with tf.control_dependencies(writes):
                fresh = [_read(h, v.dtype) for h, v in zip(handles, values)]
                return [tf.constant(True), *fresh]


def try_acquire(locks, k, token):
    """Takes node `k`'s lease for `token` if free; returns whether.

    `token` must already be on node `k`'s server. Runs inside a
    `tf.function`, in one critical section of `k` (as `acquire_read`).
    """
    lease = locks.lease_seconds

    def body():
        with tf.device(locks.layout.server_device(k)):
            owner = _read(locks.owner[k], tf.int64)
            expiry = _read(locks.expiry[k], tf.float64)
            now = tf.timestamp()
            free = tf.logical_or(tf.equal(owner, 0), now > expiry)
            writes = [
                _assign(locks.owner[k], tf.where(free, token, owner)),
                _assign(locks.expiry[k], tf.where(free, now + lease, expiry)),
            ]
            with tf.control_dependencies(writes):
                return tf.identity(free)

    return locks.execute(k, body)
