"""How a push reaches the ps tasks exactly once: stage, send, apply, reply.

Why not simply claim and apply inside the closure: everything a closure runs
on a ps task is a part of the closure's function, started by the worker that
runs the closure. When that worker dies, TensorFlow cancels those parts on
every ps task as well (the ps serves them as a call from the worker, and a
call whose caller is gone is cancelled), wherever they are: measured on
TensorFlow 2.21, a claim and apply held between the two steps on ps task 0,
even in one locked function that needs nothing more from the worker, stops
for good within a fraction of a second of the worker's SIGKILL. The push id
is then claimed and the gradient never applied (or applied on some shards
only), and the coordinator's re-run of the closure is dropped as a
duplicate. So a worker only hands its push over, in steps that are each one
atomic operation, and the chief, which outlives every worker, runs the
apply:

1. **stage**: for each ps task holding parts with gradients, the worker puts
   the task's gradient pieces in the task's staging area (a `MapStage`
   keyed by a random **attempt** id, drawn afresh by every run of a
   closure; one operation per ps task, on that task), and the push's
   **extras** (the metric updates and changed model state of its steps)
   in a staging area on ps task 0;
2. **send**: it enqueues the push's manifest `(attempt, push id, fetched
   clock, worker, reply wanted)` in the **inbox** on ps task 0 (one
   `QueueEnqueue`: all or nothing). From here on the push is committed: it
   is applied exactly once even if its worker dies at once;
3. **apply**: the **applier**, a loop that the chief runs on the ps tasks
   (a function the chief calls, so no worker's death cancels it), takes the
   manifests in order, unstages their pieces, claims the push id and applies
   the push (or counts a duplicate), commits its extras if it is not a
   duplicate, enqueues `(push id, worker, staleness, fresh)` in the
   **records** queue that the chief drains in bulk for its statistics
   (`drain`), and, if the manifest asks, `(attempt, staleness, fresh)` in
   the reply queue of the push's worker (all queues on ps task 0);
4. **reply** (only when asked: a fetch that must see the push follows in
   the closure, or S-PSGD's round): the worker dequeues replies until it
   gets its attempt's (replies left by a dead closure on the same worker
   are skipped) and goes on. A queue's dequeue waits without holding a
   thread of ps task 0 (a blocking `MapUnstage` does: workers waiting for
   replies took every thread, and the applier starved). Otherwise the
   worker goes on as soon as its manifest is sent: no round trip to the
   applier.

A worker that dies before step 2 leaves no claim (only staged pieces, freed
at the end of the epoch): the re-run's push is applied. A worker that dies
after step 2 leaves a manifest: its push is applied, the re-run's is a
duplicate. Pushes are applied one at a time, in the order they were sent.

The chief starts the applier when it schedules closures and stops it at the
end of each epoch, after every closure has finished. If the applier fails
(a ps task was lost), workers waiting for their reply would wait forever:
the chief's waits for closures go through `wait`, which raises the
applier's error instead.

Longer than 500 lines because the push protocol is checked as one: the
worker's side (stage, send, reply), the applier loop and the chief's side
(start, drain, wait, stop) share its queues and staging areas, and a change
to one needs the others in view.
"""

import dataclasses
import threading

import tensorflow as tf

from tf_decentral.strategies.downpour import placement

_STOP = -1  # The push id of the manifest that stops the applier.
_RECORD_FIELDS = ("push_id", "worker", "staleness", "fresh")
_WAKE = -2  # The push id of a record that only wakes a waiting `drain`.
# Seconds between two checks for a failed applier while the chief waits.
_CHECK_SECONDS = 0.1
# Seconds a failed wait gives the applier to fail too (a lost ps task).
_ERROR_GRACE_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class _Stage:
    """The gradient pieces one ps task receives with every push.

    Attributes:
        device: The ps task's device.
        name: The `shared_name` of its staging area.
        slots: `(target index, part index)` of every piece, in order.
        dtypes: The pieces' dtypes.
        shapes: The pieces' shapes.
    """

    device: str
    name: str
    slots: tuple
    dtypes: tuple
    shapes: tuple


def _indices(count):
    return tf.range(count, dtype=tf.int32)


def _enqueued(queue, values):
    with tf.control_dependencies([queue.enqueue(values)]):
        return tf.constant(True)


def _stage(device, name, key, values):
    """Puts `values` under `key` in the staging area `name` on `device`."""
    with tf.device(device):
        return tf.raw_ops.MapStage(
            key=key,
            indices=_indices(len(values)),
            values=values,
            dtypes=[v.dtype for v in values],
            shared_name=name,
        )


def _written_ops(graph, first):
    """Returns the ops created in `graph` since it had `first` ops."""
    return graph.get_operations()[first:]


class Applier:
    """The inbox, staging areas and replies of one model's pushes.

    Args:
        device: The device of ps task 0 (inbox, replies, the applier loop).
        prefix: A name unique to the model, for the shared staging areas.
        targets: The `ps.Target`s, one per trainable variable.
        process: `process(pieces_by_target, fetched_clock, push_id)`, traced
            in the applier: claims and applies one push; returns
            `(staleness, fresh)`.
        num_workers: The number of worker tasks.
    """

    def __init__(self, device, prefix, targets, process, num_workers):
        self.device = device
        self.prefix = prefix
        self.targets = targets
        self.process = process
        self.stages = None  # Set when the first push is traced.
        # `(variable, mode)` of the values every push also carries (the
        # metric deltas and the model state since its last push), set when
        # the first push is traced; the applier commits them with the push.
        self.extras = None
        self._function = None
        self._thread = None
        self._error = None
        with tf.init_scope(), tf.device(device):
            # Manifests: (attempt, push id, fetched clock, worker, reply?).
            self.inbox = tf.queue.FIFOQueue(
                -1,
                [tf.int64] * 5,
                shapes=[[]] * 5,
                shared_name=f"{prefix}/inbox",
                name="downpour_inbox",
            )
            # Replies: (attempt, staleness, fresh), one queue per worker.
            self.replies = [
                tf.queue.FIFOQueue(
                    -1,
                    [tf.int64, tf.int64, tf.bool],
                    shapes=[[]] * 3,
                    shared_name=f"{prefix}/replies/{worker}",
                    name="downpour_replies",
                )
                for worker in range(num_workers)
            ]
            # Records: (push id, worker, staleness, fresh), for the chief.
            self.records = tf.queue.FIFOQueue(
                -1,
                [tf.int64, tf.int64, tf.int64, tf.bool],
                shapes=[[]] * 4,
                shared_name=f"{prefix}/records",
                name="downpour_records",
            )
        self._drain = None

    # -- worker side (traced inside a closure) ------------------------------

    def send(self, grads, fetched_clock, push_id, extras=(), wait=True):
        """Stages `grads` (one per target, or None) and `extras`, sends the
        manifest; with `wait`, waits for the reply.

        Args:
            grads: One gradient per target, or None.
            fetched_clock: The clock of the parameters they were computed on.
            push_id: The push's id.
            extras: `(variable, value, mode)` triples, `mode` `"add"` (a
                metric variable's delta) or `"set"` (a non-trainable
                variable's new value), committed by the applier if and only
                if the push is fresh (a duplicate commits nothing).
            wait: Whether to wait until the push is applied (a fetch that
                must see it follows; S-PSGD's round). Without it a push
                costs the worker no round trip to the applier.

        Returns:
            `(staleness, fresh)` with `wait`; else a tensor that exists once
            the push is sent (from then on it is applied exactly once).
        """
        pieces = self._split(grads)
        stages = self._stages_of(pieces)
        layout = tuple((variable, mode) for variable, _, mode in extras)
        if self.extras is None:
            self.extras = layout
        elif layout != self.extras:
            raise RuntimeError(
                "Every push of a model must carry the same metric and state "
                f"variables. Received: {[v.path for v, _ in layout]}, after "
                f"{[v.path for v, _ in self.extras]}."
            )
        attempt = tf.raw_ops.RandomUniformInt(
            shape=tf.constant([], tf.int32),
            minval=tf.constant(0, tf.int64),
            maxval=tf.constant(2**62, tf.int64),
            seed=0,
            seed2=0,
        )
        staged = [
            _stage(
                stage.device,
                stage.name,
                attempt,
                [pieces[t][p] for t, p in stage.slots],
            )
            for stage in stages
        ]
        if extras:
            values = [
                tf.cast(value, tf.as_dtype(variable.dtype))
                for variable, value, _ in extras
            ]
            staged.append(
                _stage(self.device, self._extras_name, attempt, values)
            )
        worker = tf.cast(
            tf.distribute.coordinator.experimental_get_current_worker_index(),
            tf.int64,
        )
        with tf.device(self.device):
            with tf.control_dependencies(staged):
                sent = self.inbox.enqueue(
                    [
                        attempt,
                        tf.cast(push_id, tf.int64),
                        tf.cast(fetched_clock, tf.int64),
                        worker,
                        tf.constant(int(wait), tf.int64),
                    ]
                )
            if not wait:
                with tf.control_dependencies([sent]):
                    return tf.constant(True)
            with tf.control_dependencies([sent]):
                return self._receive(worker, attempt)

    @property
    def _extras_name(self):
        return f"{self.prefix}/extras"

    @property
    def _extras_dtypes(self):
        return [tf.as_dtype(variable.dtype) for variable, _ in self.extras]

    def _commit_extras(self, attempt, fresh):
        """Unstages a push's extras; commits them if `fresh`. Returns an op."""
        dtypes = self._extras_dtypes
        with tf.device(self.device):
            values = tf.raw_ops.MapUnstage(
                key=attempt,
                indices=_indices(len(dtypes)),
                dtypes=dtypes,
                shared_name=self._extras_name,
            )

        def commit():
            writes = []
            for (variable, mode), value in zip(self.extras, values):
                value = tf.ensure_shape(value, variable.shape)
                if mode == "add":
                    writes.append(variable.value.assign_add(value))
                else:
                    writes.append(variable.value.assign(value))
            with tf.control_dependencies(writes):
                return tf.constant(True)

        return tf.cond(fresh, commit, lambda: tf.constant(False))

    def _receive(self, worker, attempt):
        """Dequeues `worker`'s replies until `attempt`'s; returns it."""
        dequeues = [queue.dequeue for queue in self.replies]

        def body(got, staleness, fresh):
            del got, staleness, fresh
            return tf.switch_case(tf.cast(worker, tf.int32), dequeues)

        _, staleness, fresh = tf.while_loop(
            lambda got, staleness, fresh: tf.not_equal(got, attempt),
            body,
            [
                tf.constant(-1, tf.int64),
                tf.constant(0, tf.int64),
                tf.constant(False),
            ],
            parallel_iterations=1,
        )
        return staleness, fresh

    def _split(self, grads):
        """Every gradient as one piece per part of its target, or None."""
        pieces = []
        for target, grad in zip(self.targets, grads):
            if grad is None:
                pieces.append(None)
            elif target.rows is None:
                pieces.append([tf.convert_to_tensor(grad)])
            else:
                pieces.append(tf.split(grad, target.rows, axis=0))
        return pieces

    def _stages_of(self, pieces):
        """The stages for `pieces`: set by the first push traced, the same
        for every later one (the same model and loss)."""
        by_device = {}
        for t, (target, parts) in enumerate(zip(self.targets, pieces)):
            if parts is None:
                continue
            for p, (part, piece) in enumerate(zip(target.parts, parts)):
                device = placement.device_of(part)
                slots = by_device.setdefault(device, [])
                slots.append((t, p, piece.dtype, tuple(part.shape)))
        stages = tuple(
            _Stage(
                device=device,
                name=f"{self.prefix}/pieces/{index}",
                slots=tuple((t, p) for t, p, _, _ in slots),
                dtypes=tuple(dtype for _, _, dtype, _ in slots),
                shapes=tuple(shape for _, _, _, shape in slots),
            )
            for index, (device, slots) in enumerate(sorted(by_device.items()))
        )
        if self.stages is None:
            self.stages = stages
        elif stages != self.stages:
            raise RuntimeError(
                "Every push of a model must carry gradients for the same "
                "variables. Received: gradients for "
                f"{[s.slots for s in stages]}, after "
                f"{[s.slots for s in self.stages]}."
            )
        return stages

    # -- the applier (a function the chief runs) ----------------------------

    def _apply_one(self, attempt, push_id, fetched_clock, worker, reply):
        """Unstages, processes and answers one push; returns an op."""
        graph = tf.compat.v1.get_default_graph()
        first = len(graph.get_operations())
        pieces = [None] * len(self.targets)
        for stage in self.stages:
            with tf.device(stage.device):
                values = tf.raw_ops.MapUnstage(
                    key=attempt,
                    indices=_indices(len(stage.slots)),
                    dtypes=list(stage.dtypes),
                    shared_name=stage.name,
                )
                for (t, p), value, shape in zip(
                    stage.slots, values, stage.shapes
                ):
                    if pieces[t] is None:
                        pieces[t] = [None] * len(self.targets[t].parts)
                    pieces[t][p] = tf.ensure_shape(value, shape)
        staleness, fresh = self.process(pieces, fetched_clock, push_id)
        if self.extras:
            self._commit_extras(attempt, fresh)
        with tf.control_dependencies(_written_ops(graph, first)):
            recorded = self.records.enqueue(
                [push_id, worker, tf.cast(staleness, tf.int64), fresh]
            )
        answer = [attempt, staleness, fresh]

        def send_reply():
            return tf.switch_case(
                tf.cast(worker, tf.int32),
                [
                    lambda queue=queue: _enqueued(queue, answer)
                    for queue in self.replies
                ],
            )

        with tf.control_dependencies([recorded]):
            return tf.cond(
                tf.not_equal(reply, 0), send_reply, lambda: tf.constant(True)
            )

    def _loop(self):
        """Applies the inbox's pushes until it takes the stop manifest."""
        with tf.device(self.device):

            def body(*manifest):
                with tf.control_dependencies([self._apply_one(*manifest)]):
                    return tuple(self.inbox.dequeue())

            return tf.while_loop(
                lambda *manifest: tf.not_equal(manifest[1], _STOP),
                body,
                tuple(self.inbox.dequeue()),
                parallel_iterations=1,
            )

    # -- chief side ---------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the applier loop runs (or has failed and not stopped)."""
        return self._thread is not None

    def start(self) -> None:
        """Starts the applier loop on a chief thread, if it is not running.

        Call it after the first closure was traced (scheduled): the loop is
        traced for the gradients that closure pushes.
        """
        if self._thread is not None:
            return
        if self.stages is None:
            raise RuntimeError(
                "The applier starts after the first closure was scheduled "
                "(its pushes give the gradients it applies). Received: no "
                "push traced yet."
            )
        if self._function is None:
            self._function = tf.function(self._loop).get_concrete_function()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, name="downpour_applier", daemon=True
        )
        self._thread.start()

    def _run(self):
        try:
            self._function()
        except Exception as e:  # noqa: BLE001 - raised by `check`
            self._error = e

    def check(self) -> None:
        """Raises the applier's error if it failed."""
        if self._error is not None:
            raise self._error

    def wait(self, blocking, stop_waiting=None):
        """Returns `blocking()`, a wait for closures; raises the applier's
        error if the applier fails first (its closures would never end).

        Args:
            blocking: The wait.
            stop_waiting: If given, checked as often as the applier; when it
                returns True or raises, `wake` ends a `drain(block=True)`
                that `blocking` is waiting in (then its error is raised).
        """
        running = self._thread
        if running is None and stop_waiting is None:
            return blocking()
        self.check()
        outcome = {}
        finished = threading.Event()

        def run():
            try:
                outcome["value"] = blocking()
            except BaseException as e:  # noqa: BLE001 - re-raised below
                outcome["error"] = e
            finally:
                finished.set()

        threading.Thread(target=run, daemon=True).start()
        woken = False
        while not finished.wait(_CHECK_SECONDS):
            self.check()
            if stop_waiting is None or woken:
                continue
            try:
                woken = bool(stop_waiting())
            except BaseException:
                self.wake()
                raise
            if woken:
                self.wake()
        if "error" in outcome:
            # A lost ps task fails the closures and the applier: the
            # applier's error names the task, a closure's may not.
            if running is not None:
                running.join(_ERROR_GRACE_SECONDS)
            if self._error is not None:
                raise self._error from outcome["error"]
            raise outcome["error"]
        return outcome["value"]

    def drain(self, block: bool = False) -> dict:
        """Takes every record queued so far, in one call to ps task 0.

        Args:
            block: First wait (on ps task 0, holding no thread there) until
                at least one record is queued, or `wake` is called.

        Returns:
            NumPy arrays `push_id`, `worker`, `staleness` and `fresh`, in
            the order the pushes were applied.
        """
        if self._drain is None:

            def drain(block):
                with tf.device(self.device):
                    queue = self.records
                    first = queue.dequeue_many(1 if block else 0)
                    with tf.control_dependencies(first):
                        rest = queue.dequeue_many(queue.size())
                    # One tensor, so that the chief copies it in one round
                    # trip (four fields would be four).
                    return tf.stack(
                        [
                            tf.cast(tf.concat(v, 0), tf.int64)
                            for v in zip(first, rest)
                        ],
                        axis=1,
                    )

            self._drain = {
                b: tf.function(lambda b=b: drain(b)) for b in (False, True)
            }
        packed = self._drain[block]().numpy()
        values = {
            name: packed[:, i].astype(bool if name == "fresh" else "int64")
            for i, name in enumerate(_RECORD_FIELDS)
        }
        real = values["push_id"] != _WAKE  # `wake`'s records are not pushes
        return {k: v[real] for k, v in values.items()}

    def wake(self) -> None:
        """Ends a blocked `drain(block=True)` (queues a record that is not a
        push's)."""
        with tf.device(self.device):
            self.records.enqueue(
                [tf.constant(_WAKE, tf.int64)] * 3 + [tf.constant(False)]
            )

    def stop(self) -> None:
        """Stops the applier once it has applied every push sent so far,
        frees what dead closures left staged; raises its error if it
        failed. Call it when no closure is running."""
        if self._thread is None:
            return
        thread, self._thread = self._thread, None
        if self._error is None:
            stop = tf.constant(_STOP, tf.int64)
            with tf.device(self.device):
                self.inbox.enqueue([stop] * 5)
        thread.join()
        self.check()
        for stage in self.stages:
            with tf.device(stage.device):
                tf.raw_ops.MapClear(
                    dtypes=list(stage.dtypes), shared_name=stage.name
                )
        if self.extras:
            with tf.device(self.device):
                tf.raw_ops.MapClear(
                    dtypes=self._extras_dtypes,
                    shared_name=self._extras_name,
                )
