"""The parameter-server side of Downpour: counters, pushes and applies.

Vocabulary (used throughout `tf_decentral/strategies/downpour/`):

* **fetch**: a worker reads every model variable from the ps tasks into
  local tensors (its cache), together with the **clock**.
* **clock**: the version of the parameters, the number of optimizer updates
  (**applies**) started so far. It lives on ps task 0.
* **push**: a worker sends a gradient (the sum of its gradients since its
  last push). Every push has an id (its closure's id and its rank in the
  closure); a push whose id was already claimed is a **duplicate** (a push
  of the re-run of a closure whose worker died after sending it) and is
  dropped.
* **staleness** of a push: `clock at apply - clock at fetch + 1`, i.e. 1
  for a gradient of the current parameters; it counts the updates the
  gradient did not see, its own apply included.
* **apply**: the compiled Keras optimizer's `update_step` on every shard,
  each on the ps task holding the shard and its slots: only gradients and
  parameters cross the network.

Pushes are applied **exactly once**, whenever a worker dies. A worker does
not claim or apply its push itself (a worker's death cancels everything its
closure runs, on the ps tasks as well, so a claim and an apply in the
closure could be split and the push lost): it stages the gradient on the ps
tasks and sends the push to the **applier**, a loop the chief runs on the
ps tasks, which claims the push id and applies the push (or buffers it) in
one locked function, then replies (`applier.py` has the protocol). A push
sent is applied once and its closure's re-run is a duplicate; a push not
yet sent when its worker died leaves no claim, and the re-run's is applied.
So the pushes of every closure scheduled are applied exactly once: `pushes`
counts them, `duplicates` the re-runs' repeats. Each push also carries the
metric updates and the non-trainable state (e.g. batch-normalization
statistics) of its steps, which the applier commits with it, so they too
count exactly once (a duplicate commits nothing). A worker waits for its
push's reply only when a fetch that must see the push follows in the same
closure (`n_fetch`), and with `"sync"` (the next round must see the
update); otherwise it goes on as soon as its push is sent.

Protocols: `"async"` applies every push when the applier takes it
(Downpour, A-PSGD; pushes are applied one at a time, in the order they
arrived); `"softsync"` adds pushes to per-shard buffers and applies their
average once `required` pushes are in (Rudra's n-softsync); `"sync"` is the
same with `required` = the number of workers, plus a barrier on the chief.
At the end of every epoch the chief flushes the buffers: pushes still
waiting (fewer than `required`) are applied as one update with their own
average, so that nothing accepted is left out of the epoch's checkpoint or
the final model. A `tf.CriticalSection` on ps task 0 makes the applier's
claim-and-apply (or claim-and-buffer) and the chief's flush atomic.
"""

import contextlib
import dataclasses
import uuid

import tensorflow as tf

from tf_decentral import _keras_private
from tf_decentral.strategies.downpour import applier as applier_lib
from tf_decentral.strategies.downpour import placement

PROTOCOLS = ("async", "softsync", "sync")


@dataclasses.dataclass
class Target:
    """A trainable model variable and the optimizer variables it maps to.

    Attributes:
        variable: The model's Keras variable.
        parts: What the optimizer was built on for it: `[variable]`, or its
            row shards (TensorFlow variables).
        rows: The shards' row counts, or None if the variable is whole.
    """

    variable: object
    parts: list
    rows: list | None


def targets_of(trainable_variables) -> list:
    """Returns a `Target` for every trainable model variable."""
    targets = []
    for variable in trainable_variables:
        shards = placement.shards_of(variable)
        if len(shards) == 1:
            targets.append(Target(variable, [variable], None))
        else:
            rows = [int(s.shape[0]) for s in shards]
            targets.append(Target(variable, shards, rows))
    return targets


def _written_ops(graph, first):
    """Returns the ops created in `graph` since it had `first` ops."""
    return graph.get_operations()[first:]


class ParameterServerState:
    """Downpour's state on the ps tasks for one model, and its pushes.

    Created eagerly on the chief; `fetch` and `push` are called while
    tracing a worker closure.

    Args:
        model: The compiled Keras model (variables on the ps tasks).
        protocol: One of `PROTOCOLS`.
        required: Pushes averaged per apply (softsync, sync).
        staleness_lr: Divide the learning rate by the staleness.
        ring_size: How many recent push ids are remembered; must exceed the
            pushes of all closures that can be in flight at once.
        num_workers: The number of worker tasks.
        pinned: Context manager under which variables are created exactly
            on the device in scope (not placed by the strategy).
    """

    def __init__(
        self,
        model,
        *,
        protocol,
        required,
        staleness_lr,
        ring_size,
        num_workers=1,
        pinned=contextlib.nullcontext,
    ):
        self.model = model
        self.optimizer = model.optimizer
        self.protocol = protocol
        self.required = required
        self.staleness_lr = staleness_lr
        self.ring_size = ring_size
        self.targets = targets_of(model.trainable_variables)
        self._mask = None  # Targets with gradients (set when a push traces).
        self._flush_function = None
        iterations = int(self.optimizer.iterations.numpy())
        with tf.init_scope(), pinned():
            with tf.device(placement.ps_device(0)):

                def counter(name, value=0):
                    return tf.Variable(
                        value,
                        dtype=tf.int64,
                        trainable=False,
                        name=f"downpour/{name}",
                    )

                self.clock = counter("clock", iterations)
                self.pushes = counter("pushes")
                self.duplicates = counter("duplicates")
                self.pending = counter("pending")
                self.flushes = counter("flushes")
                self.flushed = counter("flushed")
                self.staleness_sum = counter("staleness_sum")
                self.claims = tf.Variable(
                    tf.fill([ring_size], tf.constant(-1, tf.int64)),
                    trainable=False,
                    name="downpour/claims",
                )
                self.lock = tf.CriticalSection(name="downpour_lock")
            self.buffers = []
            if protocol != "async":
                for target in self.targets:
                    buffers = []
                    for part in target.parts:
                        with tf.device(placement.device_of(part)):
                            buffers.append(
                                tf.Variable(
                                    tf.zeros(part.shape, part.dtype),
                                    trainable=False,
                                    name="downpour/buffer",
                                )
                            )
                    self.buffers.append(buffers)
        self.applier = applier_lib.Applier(
            placement.ps_device(0),
            f"downpour/{uuid.uuid4().hex}",
            self.targets,
            self.process,
            num_workers,
        )

    def stats(self) -> dict:
        """Returns the counters as Python ints (eager, on the chief)."""
        return {
            "clock": int(self.clock.numpy()),
            "pushes": int(self.pushes.numpy()),
            "duplicates": int(self.duplicates.numpy()),
            "pending": int(self.pending.numpy()),
            "flushes": int(self.flushes.numpy()),
            "flushed": int(self.flushed.numpy()),
            "iterations": int(self.optimizer.iterations.numpy()),
        }

    # -- worker side (traced inside a closure) ------------------------------

    def fetch(self, variables):
        """Reads the clock, then `variables`; returns `(values, clock)`."""
        clock = self.clock.read_value()
        with tf.control_dependencies([clock]):
            values = [tf.identity(tf.convert_to_tensor(v)) for v in variables]
        return values, clock

    def learning_rate(self):
        """The optimizer's current learning rate as a float32 tensor."""
        return tf.cast(
            tf.convert_to_tensor(self.optimizer.learning_rate), tf.float32
        )

    def push(self, grads, fetched_clock, push_id, extras=(), wait=True):
        """Pushes `grads` (one per target, or None) and `extras` (see
        `applier.Applier.send`), handed to the applier: applied exactly
        once, even if this worker dies meanwhile.

        Returns what `Applier.send` returns: with `wait`, `(tau, fresh)`
        once the push is applied (`tau` its staleness, 0 for a duplicate;
        `fresh` whether it was accepted); otherwise a tensor that exists
        once it is sent.
        """
        self._mask = [g is not None for g in grads]
        return self.applier.send(grads, fetched_clock, push_id, extras, wait)

    # -- the applier's side (traced in `applier.Applier`'s loop) ------------

    def process(self, pieces_by_target, fetched_clock, push_id):
        """Claims `push_id` and applies (or buffers) its gradient pieces,
        one per part of each target (or None); returns `(tau, fresh)`."""
        if self.protocol == "async":
            return self._process_async(pieces_by_target, fetched_clock, push_id)
        return self._process_buffered(pieces_by_target, fetched_clock, push_id)

    def _claim(self, push_id):
        """Records `push_id`; returns whether it is new. Run under the lock."""
        slot = tf.math.floormod(push_id, self.ring_size)
        previous = self.claims.sparse_read(slot)
        with tf.control_dependencies([previous]):
            written = self.claims.scatter_nd_update(
                tf.reshape(slot, [1, 1]), tf.reshape(push_id, [1])
            )
        with tf.control_dependencies([written]):
            return tf.not_equal(tf.identity(previous), push_id)

    def _reject(self):
        counted = self.duplicates.assign_add(1)
        with tf.control_dependencies([counted]):
            return tf.constant(0, tf.int64)

    def _scaled_learning_rate(self, staleness):
        rate = self.learning_rate()
        if self.staleness_lr:
            rate = rate / tf.maximum(tf.cast(staleness, tf.float32), 1.0)
        return rate

    def _apply(self, pieces_by_target, rate):
        """Runs the optimizer on every part with a gradient, on its ps;
        `pieces_by_target` holds one gradient piece per part (or None)."""
        optimizer = self.optimizer
        for target, pieces in zip(self.targets, pieces_by_target):
            if pieces is None:
                continue
            for part, piece in zip(target.parts, pieces):
                with tf.device(placement.device_of(part)):
                    if optimizer.weight_decay is not None and (
                        _keras_private.uses_weight_decay(optimizer, part)
                    ):
                        decay = tf.cast(optimizer.weight_decay, part.dtype)
                        optimizer.assign_sub(
                            part,
                            tf.convert_to_tensor(part)
                            * decay
                            * tf.cast(rate, part.dtype),
                        )
                    optimizer.update_step(piece, part, rate)
            constraint = getattr(target.variable, "constraint", None)
            if constraint is not None:
                value = tf.convert_to_tensor(target.variable)
                target.variable.value.assign(constraint(value))

    def _process_async(self, pieces, fetched_clock, push_id):
        def locked():
            graph = tf.compat.v1.get_default_graph()
            first = len(graph.get_operations())
            fresh = self._claim(push_id)

            def accept():
                version = self.clock.assign_add(1, read_value=True)
                staleness = version - fetched_clock
                self._apply(pieces, self._scaled_learning_rate(staleness))
                counted = [
                    self.optimizer.iterations.value.assign_add(1),
                    self.pushes.assign_add(1),
                ]
                with tf.control_dependencies(counted):
                    return tf.identity(staleness)

            staleness = tf.cond(fresh, accept, self._reject)
            # The lock is released once the returned tensors exist: make
            # them depend on every write above.
            with tf.control_dependencies(_written_ops(graph, first)):
                return tf.identity(staleness), tf.identity(fresh)

        return self.lock.execute(locked, exclusive_resource_access=False)

    def _apply_buffers(self, mask, count, total, partial=False):
        """Applies the mean of the `count` buffered pushes and resets the
        buffers; `total` is their summed staleness, `mask[k]` whether target
        `k` receives gradients. Runs under the lock, in a `tf.cond` branch.
        """
        graph = tf.compat.v1.get_default_graph()
        first = len(graph.get_operations())
        mean = tf.cast(total, tf.float32) / tf.cast(count, tf.float32)
        scale = 1.0 / tf.cast(count, tf.float32)
        averages = []
        for present, buffers in zip(mask, self.buffers):
            if not present:
                averages.append(None)
                continue
            values = []
            for buffer in buffers:
                with tf.device(buffer.device):
                    values.append(
                        buffer.read_value() * tf.cast(scale, buffer.dtype)
                    )
            averages.append(values)
        self._apply(averages, self._scaled_learning_rate(mean))
        with tf.control_dependencies(_written_ops(graph, first)):
            reset = [
                buffer.assign(tf.zeros_like(buffer))
                for buffers in self.buffers
                for buffer in buffers
            ]
            reset += [
                self.pending.assign(0),
                self.staleness_sum.assign(0),
                self.clock.assign_add(1),
                self.optimizer.iterations.value.assign_add(1),
            ]
            if partial:
                reset += [
                    self.flushes.assign_add(1),
                    self.flushed.assign_add(count),
                ]
        with tf.control_dependencies(reset):
            return tf.constant(True)

    def flush_pending(self):
        """Applies the pushes still buffered (fewer than `required`).

        Called by the chief at the end of every epoch (softsync, sync), so
        that epoch logs, checkpoints and the final model contain every
        accepted push. Returns whether anything was applied.
        """
        if self.protocol == "async":
            return False
        if self._flush_function is None:
            mask = self._mask or [True] * len(self.targets)

            @tf.function
            def flush():
                def locked():
                    graph = tf.compat.v1.get_default_graph()
                    first = len(graph.get_operations())
                    count = self.pending.read_value()
                    total = self.staleness_sum.read_value()
                    applied = tf.cond(
                        count > 0,
                        lambda: self._apply_buffers(
                            mask, count, total, partial=True
                        ),
                        lambda: tf.constant(False),
                    )
                    with tf.control_dependencies(_written_ops(graph, first)):
                        return tf.identity(applied)

                return self.lock.execute(
                    locked, exclusive_resource_access=False
                )

            self._flush_function = flush
        return bool(self._flush_function().numpy())

    def _process_buffered(self, pieces_by_target, fetched_clock, push_id):
        mask = [p is not None for p in pieces_by_target]

        def locked():
            graph = tf.compat.v1.get_default_graph()
            first = len(graph.get_operations())
            fresh = self._claim(push_id)

            def accept():
                staleness = self.clock.read_value() - fetched_clock + 1
                added = []
                for pieces, buffers in zip(pieces_by_target, self.buffers):
                    if pieces is None:
                        continue
                    for buffer, piece in zip(buffers, pieces):
                        with tf.device(buffer.device):
                            added.append(buffer.assign_add(piece))
                with tf.control_dependencies(added):
                    count = self.pending.assign_add(1, read_value=True)
                    total = self.staleness_sum.assign_add(
                        staleness, read_value=True
                    )
                    pushed = self.pushes.assign_add(1)

                def flush():
                    return self._apply_buffers(mask, count, total)

                with tf.control_dependencies([pushed]):
                    applied = tf.cond(
                        count >= self.required,
                        flush,
                        lambda: tf.constant(False),
                    )
                with tf.control_dependencies([applied]):
                    return tf.identity(staleness)

            staleness = tf.cond(fresh, accept, self._reject)
            # The lock is released once the returned tensors exist: make
            # them depend on every write above.
            with tf.control_dependencies(_written_ops(graph, first)):
                return tf.identity(staleness), tf.identity(fresh)

        return self.lock.execute(locked, exclusive_resource_access=False)
