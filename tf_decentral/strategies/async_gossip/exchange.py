"""The shared model copies of `AsyncGossipStrategy` and their atomic exchange.

Vocabulary.

* **Shared copy** `x_k`: node `k`'s model, packed into one buffer per
  (trainable, dtype) group and kept in a resource variable on node `k`'s
  server under a fixed `shared_name`, so every worker's client can read and
  write it by name.
* **Local model**: the Keras variables on this worker's client device. It is
  a cache of `x_i`: Keras computes gradients and runs the optimizer on it.
  `base` remembers the value of `x_i` last copied into it, so
  `delta = local - base` is the update this worker made since (optimizer
  step, weight decay, constraints, batch-norm statistics).
* **Exchange** with peer `j` (Lian et al. 2018, AD-PSGD): atomically
  `m = (x_i + x_j) / 2; x_j <- m; x_i <- m + delta`; then local and base
  `<- x_i`. A **solo** exchange (a passive worker's step, or no live peer)
  is `x_i <- x_i + delta`, in one critical section of `i` and without its
  lease, so it never makes an exchange of a peer with `i` wait.
* **Training flag**: 1 on node `k`'s server while its `fit` runs (and from
  start-up to its first `fit`), 0 after. An exchange with a peer whose flag
  is 0 changes nothing and says the peer is idle; the caller skips it for a
  while (see `AsyncGossipStrategy`).

Locks. Each node has one lock, a *lease* kept on its server: an owner token
and an expiry time, changed only inside a small `tf.CriticalSection` on that
server. An exchange of node `i` with peer `j` is one function call and one
round trip between the servers (see `SharedModel._build`): take `i`'s lease
and read `x_i` (one critical section on `i`); on `j`, if `j`'s lease is free,
average and write `x_j` (one critical section on `j`); back on `i`, write
`x_i` if the lease is still ours and free it. If a lease was busy nothing is
written and the caller retries. So:

* every write of `x_k` happens while its writer owns `k`'s lease, or inside
  one critical section of `k` that found the lease free; hence exchanges
  are atomic and conserve `sum_k x_k` (apart from the deltas);
* nobody waits for a lease: a busy one is retried later, so a caller's wait
  is bounded by its own retry deadline, and there is no deadlock;
* a worker killed while owning a peer's lease blocks that lease for at most
  the lease time; one killed inside a critical section (holding the mutex)
  frees the mutex at once, since the server cancels the dead client's work;
* the mutexes are held for microseconds to milliseconds: a critical section
  starts when its inputs are on its server and only reads and writes that
  server's variables.

Why not hold `tf.CriticalSection` locks across the whole exchange, as the
prototype did: a wait for such a lock cannot be bounded. Cancelling a
`MutexLock` that is waiting (a client-side timeout, or the server cancelling
the request of a client that died) marks the mutex *unlocked* in TF 2.21
(`Mutex::AcquireAsync` sets `locked_ = !cancelled`), so the next client
enters while the owner is still inside: measured, a second client got the
lock in 7 ms while another held it. Here the same TF bug can only bite if a
worker dies while its critical section waits for a mutex (milliseconds); it
could then, rarely, let two exchanges own one lease.

Round trips. An exchange is one `tf.function` whose parts TF runs on the
two servers as component functions; each crossing between them is a
round trip or half of one, on top of the call itself (a remote function
call costs 2 round trips in TF 2.21's eager runtime, a function reading on
one server, combining on the other and writing back 3.1 with 4 KB and 4.0
with 400 KB: `bench/rtt_floor.py`, `bench/results/speed_s10/`). So the
critical sections have no control flow (a busy attempt computes and sends
what a done one does, and writes back the values it read), and each
`CriticalSection.execute` runs under its server's device scope
(`Locks.execute`), so that the ops TF adds around the body (the
control group that makes the lock wait for its inputs, the identities of
its outputs) stay on that server instead of the caller's device (left to
TF's placer they cost one more round trip, and hold the peer's lock
through it). Measured with one link at 20 ms one way, a 400 KB model: an
AD-PSGD exchange took 6.1 round trips with `tf.cond` bodies and unpinned
sections, 4.8 with the sections pinned, 3.9 with both changes (at the
floor of that read-combine-write shape); a passive worker's own update,
which waits for the peer's critical section on its server, went from one
round trip to 2 ms.

Residual risk: a lease is fenced (a write lands only if its token still owns
the lease), but an exchange slower than the lease time can lose its lease
after writing one copy and before writing the other, breaking conservation
once. Keep the timeout far above an exchange's duration.

Longer than 500 lines because the lock protocol (the critical
sections of `Locks`, and `SharedModel._build`, which chains them into one
exchange) is easier to check when it reads in one place. The pairwise step
itself is injected (`SharedModel(combine=...)`, default `average`).
"""

import time

import numpy as np
import tensorflow as tf

from tf_decentral.ops import packing

_PREFIX = "tf_decentral/async_gossip"
SERVING = 2
"""A node's state after its steps, while peers may still average with it
(0: idle, skipped by peers; 1: training)."""
_POLL_SECONDS = 0.02


def _handle(device, dtype, shape, name):
    with tf.device(device):
        return tf.raw_ops.VarHandleOp(
            dtype=dtype, shape=shape, container="", shared_name=name
        )


def _read(handle, dtype):
    return tf.raw_ops.ReadVariableOp(resource=handle, dtype=dtype)


def _assign(handle, value):
    return tf.raw_ops.AssignVariableOp(resource=handle, value=value)


def _is_initialized(handle):
    return tf.raw_ops.VarIsInitializedOp(resource=handle)


def average(x_i, x_j):
    """AD-PSGD's pairwise step: `m = (x_i + x_j) / 2` for both copies.

    Args:
        x_i: The exchanging node's buffers (one tensor per group).
        x_j: The peer's buffers, of the same dtypes and shapes.

    Returns:
        `(new_i, new_j)`, here `(m, m)`.
    """
    means = [(a + b) * tf.constant(0.5, a.dtype) for a, b in zip(x_i, x_j)]
    return means, means


class Locks:
    """One lease lock and one barrier counter per node, on its server.

    Args:
        layout: The cluster's `Layout`.
        lease_seconds: How long an exchange may own a lock; a lock whose
            owner died is free again after this.
    """

    def __init__(self, layout, lease_seconds: float):
        self.layout = layout
        self.lease_seconds = float(lease_seconds)
        for name in (
            "training",
            "served",
            "owner",
            "expiry",
            "counter",
            "steps",
        ):
            setattr(self, name, [None] * layout.num_nodes)
        self.mutex = [None] * layout.num_nodes
        for k in range(layout.num_nodes):
            self.reattach(k)
        i = layout.node
        with tf.device(layout.server_device(i)):
            if not bool(_is_initialized(self.owner[i]).numpy()):
                _assign(self.expiry[i], tf.constant(0.0, tf.float64))
                _assign(self.counter[i], tf.constant(0, tf.int64))
                _assign(self.training[i], tf.constant(1, tf.int64))
                _assign(self.served[i], tf.constant(0, tf.int64))
                _assign(self.steps[i], tf.constant(0, tf.int64))
                _assign(self.owner[i], tf.constant(0, tf.int64))
        self._generation = self._read_counter(i)
        self._token = 0

    def reattach(self, k):
        """(Re)creates the handles to node `k`'s lock state on its server:
        at start-up, and after `k` restarted (see `rejoin.py`)."""
        device = self.layout.server_device(k)
        self.training[k] = _handle(device, tf.int64, [], f"{_PREFIX}/training")
        self.served[k] = _handle(device, tf.int64, [], f"{_PREFIX}/served")
        self.owner[k] = _handle(device, tf.int64, [], f"{_PREFIX}/lock_owner")
        self.expiry[k] = _handle(
            device, tf.float64, [], f"{_PREFIX}/lock_expiry"
        )
        self.counter[k] = _handle(device, tf.int64, [], f"{_PREFIX}/barrier")
        self.steps[k] = _handle(device, tf.int64, [], f"{_PREFIX}/steps")
        with tf.device(device):
            self.mutex[k] = tf.CriticalSection(
                shared_name=f"{_PREFIX}/lock_mutex"
            )

    def execute(self, k, body):
        """Runs `body` in node `k`'s critical section, inside a
        `tf.function`; returns its outputs.

        Under `k`'s server's device scope, so that the ops
        `CriticalSection.execute` adds around `body` (the group that makes
        the lock wait for its inputs, the identities of its outputs) run on
        that server: left to TF's placer they land on the caller's device,
        which costs a round trip and holds `k`'s lock through it (see
        "Round trips" in the module docstring).
        """
        with tf.device(self.layout.server_device(k)):
            return self.mutex[k].execute(body, exclusive_resource_access=False)

    def next_token(self) -> tf.Tensor:
        """Returns a token no other lock acquisition uses (never 0)."""
        self._token += 1
        return tf.constant((self.layout.node + 1) << 40 | self._token, tf.int64)

    def set_training(self, training: bool):
        """Marks this node as training (peers exchange with it) or idle
        (peers skip it: its `fit` ended). A node starts as training."""
        self._set_state(int(training))

    def set_serving(self):
        """Marks this node as serving: its steps are done, peers still
        exchange with it, but it no longer counts as training for the
        neighbours that wait for it (`read_training`)."""
        self._set_state(SERVING)

    def _set_state(self, state):
        i = self.layout.node
        with tf.device(self.layout.server_device(i)):
            _assign(self.training[i], tf.constant(state, tf.int64))

    def set_steps(self, steps: int):
        """Publishes how many training steps this node has taken in all
        (on its own server: no network)."""
        i = self.layout.node
        with tf.device(self.layout.server_device(i)):
            _assign(self.steps[i], tf.constant(steps, tf.int64))

    def served_count(self) -> int:
        """Exchanges that peers started with this node and completed."""
        i = self.layout.node
        with tf.device(self.layout.server_device(i)):
            return int(_read(self.served[i], tf.int64).numpy())

    def _free(self, k):
        """Whether node `k`'s lease is free (unowned or expired), read on
        its server; inside a critical section of `k`."""
        owner = _read(self.owner[k], tf.int64)
        expiry = _read(self.expiry[k], tf.float64)
        return (
            owner,
            expiry,
            tf.logical_or(tf.equal(owner, 0), tf.timestamp() > expiry),
        )

    def acquire_read(self, k, token, handles, dtypes):
        """Takes node `k`'s lease for `token` if free and reads its copy.

        One critical section on `k`'s server. Returns `[got, *copy]`; the
        copy is read either way (no control flow: see "Round trips" in the
        module docstring; only node `k` itself takes `k`'s lease, so it is
        busy only after a crash left it held). Runs inside a `tf.function`;
        `token` must already be on `k`'s server.
        """
        lease = self.lease_seconds

        def body():
            with tf.device(self.layout.server_device(k)):
                owner, expiry, free = self._free(k)
                writes = [
                    _assign(self.owner[k], tf.where(free, token, owner)),
                    _assign(
                        self.expiry[k],
                        tf.where(free, tf.timestamp() + lease, expiry),
                    ),
                ]
                with tf.control_dependencies(writes):
                    copy = [_read(h, d) for h, d in zip(handles, dtypes)]
                    return [tf.identity(free), *copy]

        return self.execute(k, body)

    def combine_passive(self, k, handles, dtypes, incoming, go, combine):
        """The passive side of an exchange, atomic on node `k`'s server.

        In one critical section of `k`: if `go`, `k` is training (see
        `set_training`) and `k`'s lease is free (no exchange of `k`'s own is
        under way), reads `x_k`, computes `(new_i, new_k) = combine(incoming,
        x_k)`, writes `x_k <- new_k`, counts the exchange as served by `k`
        and returns `[True, idle, *new_i]`; else changes nothing (it writes
        back the `x_k` it read, and computes `combine` anyway: no control
        flow) and returns `[False, idle, *new_i]`, `new_i` not to be used.
        `idle` is whether `k` is not
        training. Runs inside a `tf.function`; `incoming` and `go` must
        already be on `k`'s server.
        """

        def body():
            with tf.device(self.layout.server_device(k)):
                _, _, free = self._free(k)
                idle = tf.equal(_read(self.training[k], tf.int64), 0)
                ok = tf.logical_and(
                    tf.logical_and(go, free), tf.logical_not(idle)
                )

                current = [_read(h, d) for h, d in zip(handles, dtypes)]
                new_i, new_k = combine(incoming, current)
                writes = [
                    _assign(h, tf.where(ok, v, c))
                    for h, v, c in zip(handles, new_k, current)
                ]
                writes.append(
                    tf.raw_ops.AssignAddVariableOp(
                        resource=self.served[k],
                        value=tf.cast(ok, tf.int64),
                    )
                )
                with tf.control_dependencies(writes):
                    return [
                        tf.identity(ok),
                        tf.identity(idle),
                        *[tf.identity(v) for v in new_i],
                    ]

        return self.execute(k, body)

    def write_release(self, k, handles, values, token, do_write):
        """Writes `values` to `handles` on node `k` if `do_write` and `token`
        still owns `k`'s lease; frees the lease if `token` owns it.

        Returns `[written, *fresh]`, `fresh` the buffers read back after the
        write. When not written, the values read are written back (no
        control flow). `values` may be empty (only a release). Runs inside a
        `tf.function`; every input must already be on node `k`'s server.
        """
        dtypes = [v.dtype for v in values]

        def body():
            with tf.device(self.layout.server_device(k)):
                owner = _read(self.owner[k], tf.int64)
                mine = tf.equal(owner, token)
                written = tf.logical_and(do_write, mine)

                if values:
                    olds = [_read(h, v.dtype) for h, v in zip(handles, values)]
                    wrote = tf.group(
                        [
                            _assign(h, tf.where(written, v, o))
                            for h, v, o in zip(handles, values, olds)
                        ]
                    )
                else:
                    wrote = tf.no_op()
                released = _assign(
                    self.owner[k], tf.where(mine, tf.zeros_like(owner), owner)
                )
                with tf.control_dependencies([wrote, released]):
                    fresh = [_read(h, d) for h, d in zip(handles, dtypes)]
                    return [tf.identity(written), *fresh]

        return self.execute(k, body)

    def add_own(self, k, handles, deltas):
        """`x_k <- x_k + delta` in one critical section of `k`; returns the
        buffers read back after the write.

        Needs no lease: only node `k` itself writes `x_k` outside the
        critical sections of peers' exchanges, and it never does so while
        its own exchange holds its lease. Runs inside a `tf.function`;
        `deltas` must already be on `k`'s server.
        """
        dtypes = [d.dtype for d in deltas]

        def body():
            with tf.device(self.layout.server_device(k)):
                writes = [
                    tf.raw_ops.AssignAddVariableOp(resource=h, value=d)
                    for h, d in zip(handles, deltas)
                ]
                with tf.control_dependencies(writes):
                    return [_read(h, d) for h, d in zip(handles, dtypes)]

        return self.execute(k, body)

    def read_training(self, k):
        """Returns `(training, steps)` of node `k`, read from its server:
        whether it trains (see `set_training`; a serving node does not) and
        its steps in all (`set_steps`)."""
        with tf.device(self.layout.server_device(k)):
            state = _read(self.training[k], tf.int64)
            steps = _read(self.steps[k], tf.int64)
        return int(state.numpy()) == 1, int(steps.numpy())

    def _read_counter(self, k):
        """Returns node `k`'s barrier count (0 before `k` has started)."""
        with tf.device(self.layout.server_device(k)):
            if not bool(_is_initialized(self.counter[k]).numpy()):
                return 0
            return int(_read(self.counter[k], tf.int64).numpy())

    def barrier(self, nodes, timeout: float, what: str):
        """Waits until every node in `nodes` has reached this barrier.

        Every node must call `barrier` the same number of times.

        Raises:
            RuntimeError: If some nodes do not arrive within `timeout`
                seconds, or cannot be reached.
        """
        layout = self.layout
        i = layout.node
        self._generation += 1
        with tf.device(layout.server_device(i)):
            tf.raw_ops.AssignAddVariableOp(
                resource=self.counter[i], value=tf.constant(1, tf.int64)
            )
        deadline = time.monotonic() + timeout
        waiting = [k for k in nodes if k != i]
        while waiting:
            try:
                waiting = [
                    k
                    for k in waiting
                    if self._read_counter(k) < self._generation
                ]
            except tf.errors.OpError as e:
                raise RuntimeError(
                    f"{what} needs every worker, but "
                    f"{layout.task(i)} cannot reach one of "
                    f"{[layout.task(k) for k in waiting]}: "
                    f"{type(e).__name__}: {e.message[:300]}"
                ) from e
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{what} needs every worker to call it, but "
                    f"{[layout.task(k) for k in waiting]} did not within "
                    f"{timeout:g} s (waiting on {layout.task(i)})."
                )
            time.sleep(_POLL_SECONDS)


class SharedModel:
    """The shared copies of one Keras model and the exchange functions.

    Args:
        locks: The cluster's `Locks`.
        client_device: Where the local model lives.
        variables: The model's floating-point `tf.Variable`s.
        name: A name unique to this model in the program, the same on every
            worker (part of the `shared_name`s).
        combine: The pairwise step of an exchange, `combine(x_i, x_j) ->
            (new_i, new_j)` on lists of buffers (one per group), run on
            `j`'s server inside its critical section. Default: `average`,
            AD-PSGD's `(x_i + x_j) / 2` for both. It must be the same on
            every worker.
    """

    def __init__(self, locks, client_device, variables, name, *, combine=None):
        self.locks = locks
        self.layout = locks.layout
        self.client_device = client_device
        self.name = name
        self.combine = average if combine is None else combine
        trainable = [v for v in variables if v.trainable]
        others = [v for v in variables if not v.trainable]
        # One group per (trainable, dtype): its variables, packed in order.
        self.groups, self.trainable, self.dtypes = [], [], []
        for flag, group_variables in ((True, trainable), (False, others)):
            for dtype, group in packing.group_by_dtype(group_variables).items():
                self.groups.append(group)
                self.trainable.append(flag)
                self.dtypes.append(dtype)
        self.sizes = [
            sum(int(np.prod(v.shape)) for v in group) for group in self.groups
        ]
        self.handles = [None] * self.layout.num_nodes
        self.ready = [None] * self.layout.num_nodes
        self._functions = {}
        for k in range(self.layout.num_nodes):
            self.reattach(k)
        with tf.device(client_device):
            self.base = [
                tf.Variable(
                    tf.zeros([size], dtype), trainable=False, name=f"base{g}"
                )
                for g, (dtype, size) in enumerate(zip(self.dtypes, self.sizes))
            ]

    def reattach(self, k):
        """(Re)creates the handles to node `k`'s shared copy, and forgets
        the exchange functions that captured the old ones: at start-up, and
        after `k` restarted (see `rejoin.py`)."""
        device = self.layout.server_device(k)
        self.handles[k] = [
            _handle(device, dtype, [size], f"{_PREFIX}/{self.name}/x{g}")
            for g, (dtype, size) in enumerate(zip(self.dtypes, self.sizes))
        ]
        self.ready[k] = _handle(device, tf.int64, [], self.ready_name)
        for key in (k, ("detached", k)):
            self._functions.pop(key, None)

    @property
    def ready_name(self) -> str:
        """The `shared_name` of the flag each node sets on its server once
        its shared copy of this model is initialized."""
        return f"{_PREFIX}/{self.name}/ok"

    @property
    def trainable_groups(self):
        return [g for g, trainable in enumerate(self.trainable) if trainable]

    # Local model <-> buffers ---------------------------------------------

    def _pack_local(self):
        return [
            packing.pack([v.read_value() for v in group])
            for group in self.groups
        ]

    def _unpack_assign(self, buffers):
        ops = []
        for group, buffer in zip(self.groups, buffers):
            parts = packing.unpack(buffer, [v.shape for v in group])
            for v, part in zip(group, parts):
                ops.append(v.assign(part, read_value=False))
        return ops

    def local_buffers(self):
        """Returns the local model as one NumPy buffer per group."""
        with tf.device(self.client_device):
            return [b.numpy() for b in self._pack_local()]

    def set_local(self, buffers):
        """Sets the local model and `base` to `buffers` (no delta left)."""
        with tf.device(self.client_device):
            buffers = [
                tf.constant(b, dtype) for b, dtype in zip(buffers, self.dtypes)
            ]
            self._unpack_assign(buffers)
            for b, value in zip(self.base, buffers):
                b.assign(value)

    def read_copy(self, k):
        """Returns node `k`'s shared copy, one NumPy buffer per group."""
        with tf.device(self.layout.server_device(k)):
            return [
                _read(h, dtype).numpy()
                for h, dtype in zip(self.handles[k], self.dtypes)
            ]

    def write_own_copy(self, buffers):
        """Writes this node's shared copy directly (no peer may touch it),
        and returns once the write is done.

        An eager op on a remote server that has no output is only enqueued
        (TF's streaming enqueue: the call returns at once), and a function
        called next, which TF sends in an RPC of its own, can run on that
        server before it. Without the wait, this node's next exchange could
        read its copy before the write and have the write land on top of
        the exchange's result (a lost update: seen once in the fault matrix
        of session 9, the conservation test's start values). A read on the
        same server runs after the writes enqueued before it.
        """
        i = self.layout.node
        with tf.device(self.layout.server_device(i)):
            for h, b, dtype in zip(self.handles[i], buffers, self.dtypes):
                _assign(h, tf.constant(b, dtype))
            # One read after the writes: it runs after all of them.
            _is_initialized(self.handles[i][-1]).numpy()

    # Start-up -------------------------------------------------------------

    def _is_ready(self, k):
        with tf.device(self.layout.server_device(k)):
            return bool(_is_initialized(self.ready[k]).numpy())

    def _wait(self, nodes, timeout, what):
        deadline = time.monotonic() + timeout
        waiting = list(nodes)
        me = self.layout.task(self.layout.node)
        while waiting:
            try:
                waiting = [k for k in waiting if not self._is_ready(k)]
            except tf.errors.OpError as e:
                raise RuntimeError(
                    f"AsyncGossipStrategy on {me} cannot reach one of "
                    f"{[self.layout.task(k) for k in waiting]} while waiting "
                    f"for {what}: {type(e).__name__}: {e.message[:300]}"
                ) from e
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(
                    f"AsyncGossipStrategy on {me}"
                    f" waited {timeout:g} s for {what} of "
                    f"{[self.layout.task(k) for k in waiting]}. Every worker "
                    "must run the same program and call `fit`; check the "
                    "logs of those workers."
                )
            if waiting:
                time.sleep(_POLL_SECONDS)

    def _restarted_source(self):
        """For node 0: the first peer whose copy is ready already (node 0
        was restarted and rejoins a running job: it starts from that
        peer's copy), else None (a fresh start: peers wait for node 0)."""
        for k in range(1, self.layout.num_nodes):
            try:
                if self._is_ready(k):
                    return k
            except tf.errors.OpError:
                continue  # Gone too: not a source.
        return None

    def initialize(self, timeout: float):
        """Starts every worker from node 0's model; waits for all workers.

        A worker restarted into a running job starts from a peer's current
        copy: node 0's, or for node 0 the first ready peer's.

        Raises:
            ValueError: If node 0's model has a different size.
            RuntimeError: If a worker does not get ready within `timeout`.
        """
        i = self.layout.node
        source = 0 if i != 0 else self._restarted_source()
        if source is None:
            buffers = self.local_buffers()
        else:
            self._wait([source], timeout, "the initial model")
            buffers = self.read_copy(source)
            ours = [int(s) for s in self.sizes]
            theirs = [int(b.size) for b in buffers]
            if ours != theirs:
                raise ValueError(
                    "Every worker must build the same model. Received: "
                    f"{self.layout.task(i)} has parameter groups of sizes "
                    f"{ours}, {self.layout.task(0)} has {theirs}."
                )
        self.set_local(buffers)
        self.write_own_copy(buffers)
        with tf.device(self.layout.server_device(i)):
            _assign(self.ready[i], tf.constant(1, tf.int64))
        self._wait(range(self.layout.num_nodes), timeout, "the start")

    # Exchange -------------------------------------------------------------

    def _build(self, j):
        """Returns the `tf.function` exchanging with `j` (None: solo, see
        `Locks.add_own`).

        One round trip between the two servers (Lian et al. 2018's atomic
        averaging), in three critical sections:

        1. on `i`'s server: take `i`'s lease, read `x_i` (sent on even if
           the lease was busy: step 2 then changes nothing);
        2. on `j`'s server, with `x_i`: if `j`'s lease is free (no exchange
           of `j`'s own is under way), `m = (x_i + x_j) / 2; x_j <- m`,
           answer `m`;
        3. on `i`'s server: `x_i <- m + delta` if `j` answered and `i`'s
           lease is still ours; free the lease.

        `x_i` cannot change between 1 and 3 (we own its lease, and a peer's
        step 2 on `i` needs it free); step 2 is atomic on `j`. So the sum of
        the copies changes only by the deltas.

        Deadlock freedom. Every critical section starts only when its
        inputs exist (`CriticalSection` makes its lock wait for them) and
        then only touches its own server, so no mutex is held while waiting
        for another. Inside a `tf.function` TF chains the release of every
        critical section after those created before it (automatic control
        dependencies on `ConsumeMutexLock`); here each one's inputs already
        depend on the previous one, so that chain adds no wait.
        """

        @tf.function(input_signature=[tf.TensorSpec([], tf.int64)])
        def exchange(token):
            with tf.device(self.client_device):
                local = self._pack_local()
                deltas = [a - b.read_value() for a, b in zip(local, self.base)]
            written, idle, fresh = self._remote_steps(j, token, deltas)
            return self._take_fresh(written, idle, fresh, local)

        return exchange

    def _build_detached(self, j):
        """Returns the exchange with `j` of a snapshot of the local model:
        `f(token, *snapshot) -> (written, idle, *fresh)`, which reads and
        writes no Keras variable (so it may run while the next step
        trains); `apply_detached` then takes `fresh` in."""
        specs = [
            tf.TensorSpec([size], dtype)
            for size, dtype in zip(self.sizes, self.dtypes)
        ]

        @tf.function(input_signature=[tf.TensorSpec([], tf.int64), *specs])
        def exchange(token, *snapshot):
            with tf.device(self.client_device):
                deltas = [
                    a - b.read_value() for a, b in zip(snapshot, self.base)
                ]
            written, idle, fresh = self._remote_steps(j, token, deltas)
            with tf.device(self.client_device):
                return (
                    tf.identity(written),
                    tf.identity(idle),
                    *[tf.identity(f) for f in fresh],
                )

        return exchange

    def _remote_steps(self, j, token, deltas):
        """The server side of an exchange (see `_build`), inside a
        `tf.function`: returns `(written, idle, fresh)`, `fresh` being
        `x_i` read back."""
        layout, locks = self.layout, self.locks
        i = layout.node
        dev_i = layout.server_device(i)
        dtypes = self.dtypes
        with tf.device(dev_i):
            token_i = tf.identity(token)
            deltas_i = [tf.identity(d) for d in deltas]
        if j is None:
            # Solo: x_i <- x_i + delta, one critical section, no lease.
            fresh = locks.add_own(i, self.handles[i], deltas_i)
            with tf.device(dev_i):
                return tf.constant(True), tf.constant(False), fresh
        # 1. Take i's lease and read x_i.
        got, *x_i = locks.acquire_read(i, token_i, self.handles[i], dtypes)
        # 2. On j: combine x_i and x_j, write x_j.
        with tf.device(layout.server_device(j)):
            go = tf.identity(got)
            incoming = [tf.identity(a) for a in x_i]
        ok, idle, *new_i = locks.combine_passive(
            j, self.handles[j], dtypes, incoming, go, self.combine
        )
        # 3. On i: x_i <- new_i + delta if j answered; free i's lease.
        with tf.device(dev_i):
            ok = tf.identity(ok)
            new_i = [a + d for a, d in zip(new_i, deltas_i)]
        written, *fresh = locks.write_release(
            i, self.handles[i], new_i, token_i, ok
        )
        return written, idle, fresh

    def _take_fresh(self, written, idle, fresh, local):
        """Sets the local model and `base` to `fresh` if `written`; returns
        `(written, idle)` on the client (inside the exchange function)."""
        with tf.device(self.client_device):
            written = tf.identity(written)
            new_local = [tf.where(written, f, a) for f, a in zip(fresh, local)]
            updates = self._unpack_assign(new_local)
            updates += [
                b.assign(tf.where(written, f, b.read_value()))
                for b, f in zip(self.base, fresh)
            ]
            with tf.control_dependencies(updates):
                return tf.identity(written), tf.identity(idle)

    def exchange(self, j, token) -> str:
        """Runs one exchange with peer `j` (None: solo).

        Returns `"done"`, `"busy"` (a lock was busy: nothing changed) or
        `"idle"` (`j` is not training: nothing changed).
        """
        if j not in self._functions:
            self._functions[j] = self._build(j)
        written, idle = self._functions[j](token)
        if bool(written.numpy()):
            return "done"
        return "idle" if bool(idle.numpy()) else "busy"

    def snapshot(self):
        """Returns the local model packed (one tensor per group), a copy
        that the next training step does not change."""
        with tf.device(self.client_device):
            return [tf.identity(b) for b in self._pack_local()]

    def exchange_detached(self, j, token, snapshot):
        """Runs one exchange of `snapshot` with peer `j` (None: solo)
        without touching the local model; returns `(status, fresh)`, status
        as `exchange`'s, `fresh` for `apply_detached` when `"done"`."""
        key = ("detached", j)
        if key not in self._functions:
            self._functions[key] = self._build_detached(j)
        written, idle, *fresh = self._functions[key](token, *snapshot)
        if bool(written.numpy()):
            return "done", fresh
        return ("idle" if bool(idle.numpy()) else "busy"), None

    def apply_detached(self, fresh, snapshot):
        """Takes in a detached exchange of `snapshot`: `local <- fresh +
        (local - snapshot)` (keeps the steps trained meanwhile) and `base
        <- fresh`."""
        if "apply" not in self._functions:

            @tf.function
            def apply(fresh, snapshot):
                with tf.device(self.client_device):
                    local = self._pack_local()
                    new = [
                        f + (a - s) for f, a, s in zip(fresh, local, snapshot)
                    ]
                    updates = self._unpack_assign(new)
                    updates += [b.assign(f) for b, f in zip(self.base, fresh)]
                    with tf.control_dependencies(updates):
                        return tf.constant(True)

            self._functions["apply"] = apply
        self._functions["apply"](list(fresh), list(snapshot))

    def release(self, token):
        """Frees this node's lease if `token` owns it (after an error)."""
        i = self.layout.node
        if ("release", i) not in self._functions:
            locks = self.locks

            @tf.function(input_signature=[tf.TensorSpec([], tf.int64)])
            def release(token):
                with tf.device(self.layout.server_device(i)):
                    token = tf.identity(token)
                    return locks.write_release(
                        i, [], [], token, tf.constant(False)
                    )[0]

            self._functions[("release", i)] = release
        self._functions[("release", i)](token)
