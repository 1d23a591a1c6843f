"""What every strategy that talks to other tasks shares.

* `COMMUNICATION_ERRORS`: the TensorFlow errors that mean "a peer or the
  network failed", as opposed to a bug in the model. Strategies catch these
  (and only these) to explain a lost peer, drop it, or retry elsewhere.
* `communication_options`: validates a user's
  `tf.distribute.experimental.CommunicationOptions` or builds the default.
* The one allocator of collective keys (`key_base`, and the ranges of the
  neighbour exchange), defined in `tf_decentral.ops.collective_keys`.
* `Keras3ExtendedFixes` / `Keras3StrategyFixes`: the two fixes that
  `MultiWorkerMirroredStrategy`-based strategies need under Keras 3's `fit`.
* `explain_lost_worker`: the message of a collective that lost a worker,
  naming it (probing which peers still accept connections).
* `broadcast_training_state`: every worker takes the chief's model,
  optimizer and resume epoch (after a BackupAndRestore restore).
* `StepWatchdog`: the collective timeout of Keras' training step, one
  thread per process (`NO_OP_TIMEOUT` for the step's own collectives);
  `WatchedKerasStep`: runs every call of Keras' step under it.
"""

import contextlib
import re
import threading
import time

import tensorflow as tf

from tf_decentral import _tf_private
from tf_decentral.cluster import probe
from tf_decentral.ops import collective_keys
from tf_decentral.ops import packing

ReduceOp = tf.distribute.ReduceOp

COMMUNICATION_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
    tf.errors.InternalError,
)
"""Errors of a lost peer or network: raised by collectives and remote ops."""

PEER_STATE_LOST_ERRORS = COMMUNICATION_ERRORS + (
    tf.errors.NotFoundError,
    tf.errors.FailedPreconditionError,
)
"""`COMMUNICATION_ERRORS`, plus what a restarted peer's server raises for
state it no longer has (a resource that is gone, an uninitialized variable).
"""

REMOTE_FUNCTION_ERRORS = COMMUNICATION_ERRORS + (tf.errors.UnknownError,)
"""`COMMUNICATION_ERRORS`, plus the `UnknownError` a
`ClusterCoordinator` raises when a remote closure's task went away."""

# The collective key ranges live with the ops that use them (ops/ is below
# strategies/ in the import order); re-exported here for the strategies.
NEIGHBOR_GROUP_KEY_BASE = collective_keys.NEIGHBOR_GROUP_KEY_BASE
NEIGHBOR_INSTANCE_KEY_BASE = collective_keys.NEIGHBOR_INSTANCE_KEY_BASE
key_base = collective_keys.key_base


# `tf.distribute.experimental.CommunicationOptions` is a factory, not the
# class of the objects it makes.
_OPTIONS_TYPE = type(tf.distribute.experimental.CommunicationOptions())


def communication_options(options=None, default_timeout=None):
    """Returns `options` with a timeout, or default options.

    Args:
        options: A `tf.distribute.experimental.CommunicationOptions` or None.
        default_timeout: Seconds of the collective timeout when `options`
            is None or sets none.

    Raises:
        TypeError: If `options` is neither None nor `CommunicationOptions`.
        ValueError: If its `timeout_seconds` is not positive (TF would wait
            forever on 0 and fail at once on a negative value).
    """
    if options is None:
        options = tf.distribute.experimental.CommunicationOptions()
    if not isinstance(options, _OPTIONS_TYPE):
        raise TypeError(
            "`communication_options` must be a "
            "`tf.distribute.experimental.CommunicationOptions`. "
            f"Received: {options!r}"
        )
    timeout = options.timeout_seconds
    if timeout is None:
        return options.merge(
            tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=default_timeout
            )
        )
    if isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(
            "`communication_options.timeout_seconds` must be a positive "
            "number of seconds (a dead worker is detected after it). "
            f"Received: timeout_seconds={timeout!r}"
        )
    return options


NO_OP_TIMEOUT = 0
"""The per-op timeout of a collective in Keras' step (0: none; TF's
`CommunicationOptions` merge keeps a 0 over a default, unlike None): the
step's `StepWatchdog` enforces the timeout instead."""


class StepWatchdog:
    """Aborts this process's collectives when a step outlives `timeout`.

    TF's per-op timeout (`CommunicationOptions.timeout_seconds`, a
    collective op's `timeout`) starts, for every collective op it runs, a
    thread that sleeps the whole timeout (two: one more for the op's
    parameters; `base_collective_executor.cc`, `SchedNonBlockingClosure
    After`), and TF's docs say to use it for debugging only. A process then
    holds about `2 x timeout x collective ops per second` threads: ring
    D-PSGD at 20 ms one way, 15 steps/s and a 180 s timeout grew by 100
    threads a second to 3500 per worker, and 8 workers on one host hit
    the kernel's `pid_max` (32768): every thread creation failed and the
    workers aborted (`std::system_error`, "Resource temporarily
    unavailable").

    So the collectives of Keras' step run without a per-op timeout
    (`NO_OP_TIMEOUT`) and `step()` arms this watchdog instead: one thread,
    which aborts the collectives (`DeadlineExceeded`, as TF's timeout
    does; a dead or hung peer is then named by `explain_lost_worker`) when
    a step runs longer than `timeout` seconds.

    Args:
        timeout: Seconds a step may take; None: no watchdog.
        what: Names the step in the abort message.
    """

    def __init__(self, timeout, what="the training step"):
        self.timeout, self.what = timeout, what
        self.fired = 0
        self._deadline = None
        self._condition = threading.Condition()
        self._thread = None

    @contextlib.contextmanager
    def step(self, steps=1):
        """Within the block, the collectives of `steps` training steps (one
        call of Keras' step function runs `steps_per_execution` of them)
        have `steps x timeout` seconds (re-entrant: the outermost block
        counts)."""
        if not self.timeout or self._deadline is not None:
            yield
            return
        with self._condition:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="tfd_step_watchdog", daemon=True
                )
                self._thread.start()
            self._deadline = time.monotonic() + self.timeout * max(1, steps)
            self._condition.notify()
        try:
            yield
        finally:
            with self._condition:
                self._deadline = None
                self._condition.notify()

    def _watch(self):
        while True:
            with self._condition:
                while self._deadline is None:
                    self._condition.wait()
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._condition.wait(left)
                    continue
                self._deadline = None
                self.fired += 1
            _tf_private.abort_collective_ops(
                "Collective has timed out during execution: "
                f"{self.what} ran longer than {self.timeout:g} s per step "
                "(communication_options.timeout_seconds)."
            )


class WatchedKerasStep:
    """Runs every call of Keras' step under a `StepWatchdog` (an extended's
    mixin, before `_keras_hooks.TrainFunctionHooks` in its bases; it calls
    `init_watched_step` and has a `hook_counts` counter). Its collectives
    read `in_keras_step` to drop their per-op timeout (`NO_OP_TIMEOUT`);
    or it overrides `keras_step_options`, a context around every call.
    """

    def init_watched_step(self, timeout, what):
        """Sets up the watchdog: `timeout` seconds per step (None: none);
        `what` names the step in its abort message."""
        self.watchdog = StepWatchdog(timeout, what)
        self._step = threading.local()

    @property
    def in_keras_step(self) -> bool:
        """Whether Keras' training step is being traced or run here."""
        return getattr(self._step, "depth", 0) > 0

    @contextlib.contextmanager
    def keras_step(self):
        """In the block, `in_keras_step` (this thread) and the options."""
        self._step.depth = getattr(self._step, "depth", 0) + 1
        try:
            with self.keras_step_options():
                yield
        finally:
            self._step.depth -= 1

    def keras_step_options(self):
        """A context around every call of Keras' step (default: none)."""
        return contextlib.nullcontext()

    def keras_wrap_train_function(self, model, train_function):
        """Runs every call of Keras' step in `keras_step` and under the
        watchdog, with `steps_per_execution x timeout` seconds per call."""
        steps = int(getattr(model, "steps_per_execution", 1) or 1)

        def watched_train_function(*args, **kwargs):
            self.hook_counts["watched_steps"] += 1
            with self.keras_step(), self.watchdog.step(steps):
                return train_function(*args, **kwargs)

        return watched_train_function


_TASK_IN_ERROR = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")
_DEATH_PHRASES = re.compile(
    r"connection reset|connection refused|failed to connect|socket closed",
    re.IGNORECASE,
)
_PROBE_ROUNDS = 3


def named_tasks(text: str, cluster: dict, own: tuple) -> list:
    """Returns `(job, index)` of every other task `text` names, in order.

    Args:
        text: An error message of TensorFlow's runtime.
        cluster: Job name -> addresses (`ClusterSpec.as_dict()`).
        own: `(job, index)` of this task, left out.
    """
    tasks = []
    for job, index in _TASK_IN_ERROR.findall(text):
        task = (job, int(index))
        if task != tuple(own) and task not in tasks:
            tasks.append(task)
    return tasks


def _address(task, cluster):
    """The address of `(job, index)` (a list or, for a sparse job, a dict
    in `cluster`), or None."""
    job, index = task
    try:
        return (cluster.get(job) or ())[index]
    except (IndexError, KeyError):
        return None


def _label(task, cluster):
    job, index = task
    return f"{job}:{index} ({_address(task, cluster) or '?'})"


def explain_lost_worker(
    error,
    *,
    cluster: dict,
    own: tuple,
    what: str,
    timeout,
    peers=(),
    gossip=False,
    probe_all=probe.probe_all,
    pause=1.0,
) -> str:
    """Returns the message of `error` for a collective that lost a worker.

    The peers this task depends on, and the tasks TF's message names, are
    probed (`tf_decentral.cluster.probe`): the ones that no longer accept
    connections are named, the peers first. TF's message alone can name
    the wrong task: a collective aborted because the task hosting TF's
    coordination service (worker 0) exited names worker 0, even when
    worker 0 only fell because another worker died first.

    Args:
        error: A `COMMUNICATION_ERRORS` instance raised by a step.
        cluster: Job name -> addresses (`ClusterSpec.as_dict()`).
        own: `(job, index)` of this task.
        what: What was running where, e.g. "All-reduce training on
            worker:0".
        timeout: The collective timeout in seconds (None: no timeout).
        peers: `(job, index)` of the tasks this task's collectives need
            (every other worker for an all-reduce, the neighbours for
            gossip).
        gossip: Whether `peers` are gossip neighbours (the message lists
            them).
        probe_all: `probe.probe_all`, replaceable in tests.
        pause: Seconds between probe rounds (when TF's error says a
            connection was reset or refused but every peer still accepted
            one: up to `_PROBE_ROUNDS` rounds).
    """
    text = getattr(error, "message", str(error))
    named = named_tasks(text, cluster, own)
    candidates = list(dict.fromkeys([tuple(p) for p in peers] + named))
    addresses = {t: _address(t, cluster) for t in candidates}
    probed = [a for a in addresses.values() if a is not None]
    # A peer whose connection TF saw reset or refused is dying or dead:
    # its port may accept for a moment longer (its process still tearing
    # down), so probe again before saying every peer is there.
    rounds = _PROBE_ROUNDS if _DEATH_PHRASES.search(text) else 1
    for round_ in range(rounds):
        states = probe_all(probed)
        gone = [t for t in candidates if states.get(addresses[t]) == probe.GONE]
        if gone or round_ == rounds - 1:
            break
        time.sleep(pause)
    silent = [
        t for t in candidates if states.get(addresses[t]) == probe.UNKNOWN
    ]
    if gone:
        culprit = ", ".join(_label(t, cluster) for t in gone)
        state = (
            f"Not accepting connections any more: {culprit}. That process "
            "has probably stopped (crash, out of memory, preemption)."
        )
    else:
        culprit = (
            ", ".join(_label(t, cluster) for t in named)
            or "a peer (TF did not say which)"
        )
        state = (
            "Every peer still accepts connections: one may be hung "
            "(stopped, stuck or overloaded), or the network drops its "
            "packets."
        )
        if silent:
            state = (
                "No answer to a connection within "
                f"{probe.DEFAULT_TIMEOUT:g} s from: "
                f"{', '.join(_label(t, cluster) for t in silent)} (hung, "
                "or unreachable)."
            )
    aborted = text.find("Collective ops is aborted")
    detail = text[aborted:] if aborted >= 0 else text[-1500:]
    limit = f"{timeout:g} s" if timeout else "no timeout"
    neighbours = (
        "This worker's gossip neighbours are "
        f"{', '.join(_label(tuple(p), cluster) for p in peers)}. "
        if gossip and peers
        else ""
    )
    return (
        f"{what} lost contact with {culprit}: {type(error).__name__}. "
        f"{neighbours}{state} Collectives give up after "
        f"{limit} (set with communication_options="
        "tf.distribute.experimental.CommunicationOptions(timeout_seconds="
        "...)). Check that worker's log, then restart every worker: with "
        "keras.callbacks.BackupAndRestore, training resumes from the last "
        "checkpoint.\n\nTensorFlow's error: " + detail[:2000]
    )


class Keras3ExtendedFixes:
    """Mixin for `CollectiveAllReduceExtended`: reduces nested structures.

    Keras' first-batch build calls `strategy.reduce("MEAN", (x, y),
    axis=None)` on a nested structure, which TF's collective `reduce_to`
    does not map over ("Attempt to convert a value (PerReplica...)").
    """

    def reduce_values(self, reduce_op, value, destinations, options):
        if tf.nest.is_nested(value):
            self.hook_counts["nested_reduce"] += 1
            return tf.nest.map_structure(
                lambda v: self.collective_reduce(
                    reduce_op, v, destinations, options
                ),
                value,
            )
        return self.collective_reduce(reduce_op, value, destinations, options)

    def collective_reduce(self, reduce_op, value, destinations, options):
        """Reduces one (non-nested) value as TF's collective extended does."""
        return _tf_private.collective_reduce_to(
            self, reduce_op, value, destinations, options
        )


class Keras3StrategyFixes:
    """Mixin for multi-worker strategies: `reduce(axis=0)` of scalars.

    Keras reduces scalar step outputs with `strategy.reduce("MEAN", scalar,
    axis=0)`, which TF rejects ("Invalid reduction dimension 0 for input
    with 0 dimensions").
    """

    def reduce(self, reduce_op, value, axis):
        if axis is not None and _all_scalars(value):
            self.extended.hook_counts["scalar_reduce_axis"] += 1
            axis = None
        return super().reduce(reduce_op, value, axis)


def _all_scalars(value):
    components = []
    for v in tf.nest.flatten(value):
        if isinstance(v, tf.distribute.DistributedValues):
            components.extend(v.values)
        else:
            components.append(v)
    return all(
        getattr(c, "shape", None) is not None and c.shape.rank == 0
        for c in components
    )


def broadcast_training_state(strategy, model) -> None:
    """Sets every worker's model, optimizer and resume epoch to those of
    global replica 0 (the chief's). A collective: every worker calls it.

    BackupAndRestore restores on every worker from its own `backup_dir`;
    with one folder per task only the chief's holds the latest backup (the
    others write into scratch directories), so the chief's state is sent
    to all.
    """
    from tf_decentral import _keras_private

    variables = list(model.weights)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    epoch = _keras_private.initial_epoch(model)
    epoch = tf.constant(-1.0 if epoch is None else float(epoch), tf.float64)
    values = [tf.convert_to_tensor(v.value) for v in variables]
    tensors = [tf.cast(t, _wire_dtype(t.dtype)) for t in values]
    tensors.append(epoch)
    received = broadcast_from_first_replica(strategy, tensors)
    for v, old, value in zip(variables, values, received):
        v.assign(tf.cast(value, old.dtype))
    resumed = int(received[-1].numpy())
    _keras_private.set_initial_epoch(model, None if resumed < 0 else resumed)


def _wire_dtype(dtype):
    return dtype if dtype.is_floating else tf.float64


def broadcast_from_first_replica(strategy, tensors) -> list:
    """Returns `tensors` as global replica 0 holds them (one collective per
    dtype: replica 0 sends its values, the others zeros, summed)."""
    groups = packing.group_by_dtype(tensors)
    out = {}
    for group in groups.values():
        packed = packing.pack(group)

        def value(context, packed=packed):
            if context.replica_id_in_sync_group == 0:
                return packed
            return tf.zeros_like(packed)

        values = strategy.experimental_distribute_values_from_function(value)
        total = strategy.reduce(ReduceOp.SUM, values, axis=None)
        parts = packing.unpack(total, [t.shape for t in group])
        for t, part in zip(group, parts):
            out[id(t)] = part
    return [out[id(t)] for t in tensors]


def unreachable(addresses, timeout=1.0) -> list[int]:
    """Indices of `addresses` (`"host:port"`) that refuse a TCP connection.

    For an error that does not say which task failed: a killed task's port
    refuses connections at once (a stopped one still accepts them).

    Example:
        >>> from tf_decentral.testing import cluster
        >>> port = cluster.pick_ports(1)[0]
        >>> unreachable([f"localhost:{port}"])
        [0]
    """
    import socket

    lost = []
    for index, address in enumerate(addresses):
        host, _, port = address.rpartition(":")
        try:
            where = (host.strip("[]"), int(port))
            socket.create_connection(where, timeout).close()
        except (OSError, ValueError):
            lost.append(index)
    return lost
