"""The chief side of Downpour: Keras' `train_function`, closure scheduling.

`fit` calls `train_function(iterator)` once per `steps_per_execution`
batches and expects the logs back. Here a call only counts the batches as
pending and schedules closures on the `ClusterCoordinator` (one closure =
`lcm(n_fetch, n_push)` steps of one worker): it returns at once, while at
most `max_inflight` closures are queued or running. At the end of each epoch
(`end_epoch`, called by the Keras hook before the epoch's callbacks) the
remaining batches are scheduled and every closure is waited for, so that
epoch logs, `ModelCheckpoint` and `BackupAndRestore` see every committed
update. `"sync"` schedules one closure per worker at a time and waits for
all of them (S-PSGD's barrier); warm-up steps run one closure at a time.
"""

import collections
import re
import time

import tensorflow as tf
from absl import logging

from tf_decentral._tf_private import coordinator_values
from tf_decentral.strategies.downpour import ps as ps_lib
from tf_decentral.strategies.downpour import worker as worker_lib

# Seconds between two reads of the metrics from the ps tasks for the
# per-batch logs (the epoch logs are always read).
_LOGS_INTERVAL_SECONDS = 0.5
_PS_TASK = re.compile(r"/job:ps/replica:\d+/task:(\d+)")
_WORKER_TASK = re.compile(r"/job:worker/replica:\d+/task:(\d+)")
_FAILURES = (
    tf.errors.UnavailableError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
    tf.errors.DeadlineExceededError,
    tf.errors.InternalError,
    tf.errors.UnknownError,
)

PushRecord = collections.namedtuple(
    "PushRecord", ["closure", "worker", "push", "staleness", "fresh"]
)
PushRecord.__doc__ = """One push, as the chief saw its closure finish.

Attributes:
    closure: The closure's id (closures are numbered in scheduling order).
    worker: The index of the worker that ran the closure (its last run).
    push: The push's index within the closure.
    staleness: The push's staleness (0 for a duplicate).
    fresh: Whether the ps accepted it (False: a duplicate push of a re-run
        closure, dropped).
"""


def explain(error, coordinator=None):
    """Returns `error` with a clear message if a ps task failed, else None.

    A closure cancelled because another one failed reports only its
    cancellation; the coordinator (if given) then knows the root error.
    """
    if isinstance(error, tf.errors.CancelledError) and coordinator is not None:
        try:
            coordinator.join()
        except _FAILURES as root:
            error = root
    text = str(error)
    if not isinstance(error, _FAILURES):
        return None
    match = _PS_TASK.search(text)
    if match is None:
        return None
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    message = (
        f"DownpourParameterServerStrategy lost parameter server "
        f"ps:{match.group(1)} ({type(error).__name__}: {first_line[:300]}). "
        "The parameters and optimizer state it held are gone, so training "
        "cannot continue. Restart the ps task and this chief; with a "
        "`keras.callbacks.BackupAndRestore` callback, `fit` resumes from the "
        "last completed epoch."
    )
    return type(error)(None, None, message)


class TrainFunction:
    """`model.train_function` of a model trained by a Downpour strategy."""

    def __init__(self, strategy, model):
        self.strategy = strategy
        self.model = model
        self.state = None
        self.builder = None
        self.active = False
        self._dataset = None
        self._iterator = None
        self._consume_chief_batches = False
        self._pending_steps = 0
        self._inflight = collections.deque()
        self._logs = None
        self._logs_time = 0.0
        self._read_metrics = None

    # -- Keras' interface -------------------------------------------------

    def __call__(self, iterator):
        dataset = getattr(iterator, "_tfd_dataset", None)
        if dataset is None:
            raise ValueError(
                "DownpourParameterServerStrategy trains only through "
                "`model.fit`: its workers read the dataset `fit` received. "
                "`train_on_batch` and custom loops are not supported. "
                f"Received: an iterator of type {type(iterator).__name__}."
            )
        with self._explained():
            self._prepare(dataset)
            steps = self.model.steps_per_execution
            if self._consume_chief_batches:
                steps = self._consume(iterator, steps)
            if not self.active:
                self.active = True
                self.strategy._start_epoch()
            self._pending_steps += steps
            self._dispatch(final=False)
            return self._read_logs(force=False)

    def end_epoch(self):
        """Runs the epoch's remaining steps, waits for them; returns logs."""
        if not self.active:
            return None
        with self._explained():
            self._dispatch(final=True)
            self._wait_all()
            # softsync/sync: apply what is still buffered, so the epoch's
            # logs, checkpoint and the final model contain every push.
            self.state.flush_pending()
            self.active = False
            return self._read_logs(force=True)

    # -- internals ----------------------------------------------------------

    def _explained(self):
        return Explained(self.strategy.coordinator)

    def _consume(self, iterator, steps):
        # A dataset of unknown size: the chief reads along to find the
        # epoch's end (Keras stops at StopIteration / OutOfRangeError).
        consumed = 0
        for _ in range(steps):
            try:
                next(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                if consumed == 0:
                    raise
                break
            consumed += 1
        return consumed

    def _prepare(self, dataset):
        strategy = self.strategy
        if self.state is None:
            self.state = ps_lib.ParameterServerState(
                self.model,
                protocol=strategy.protocol,
                required=strategy._required_pushes,
                staleness_lr=strategy.staleness_lr,
                ring_size=strategy._ring_size,
                pinned=strategy.extended.pinned_creation,
            )
            self.builder = worker_lib.ClosureBuilder(
                self.model,
                self.state,
                n_fetch=strategy.n_fetch,
                n_push=strategy.n_push,
                max_pushes=strategy._max_pushes,
            )
            strategy._latest = self
        if dataset is not self._dataset:
            self._wait_all()
            self._iterator = self._per_worker_iterator(dataset)
            self._dataset = dataset
            cardinality = int(dataset.cardinality())
            self._consume_chief_batches = (
                cardinality == tf.data.UNKNOWN_CARDINALITY
            )

    def _per_worker_iterator(self, dataset):
        num_workers = self.strategy.extended.num_workers
        cardinality = int(dataset.cardinality())
        if 0 <= cardinality < num_workers:
            raise ValueError(
                "The dataset must have at least one batch per worker: each "
                "of the "
                f"{num_workers} workers reads every {num_workers}-th batch. "
                f"Received: a dataset of {cardinality} batch(es). Use a "
                "smaller `batch_size` or more data."
            )
        graph_def = coordinator_values.serialize_dataset_to_graph(dataset)
        element_spec = dataset.element_spec

        worker_index = (
            tf.distribute.coordinator.experimental_get_current_worker_index
        )

        def dataset_fn():
            worker = worker_index()
            shard = coordinator_values.deserialize_dataset_from_graph(
                graph_def, element_spec
            )
            return shard.shard(num_workers, worker).repeat()

        coordinator = self.strategy.coordinator
        return iter(coordinator.create_per_worker_dataset(dataset_fn))

    def _schedule(self, num_steps):
        strategy = self.strategy
        closure_id = strategy._new_closure_id()
        function = self.builder.function(num_steps)
        remote = strategy.coordinator.schedule(
            function,
            args=(self._iterator, tf.constant(closure_id, tf.int64)),
        )
        self._inflight.append(remote)

    def _collect_oldest(self):
        remote = self._inflight.popleft()
        try:
            result = remote.fetch()
        except tf.errors.UnavailableError as e:
            # The closure finished (its pushes are in) but its worker died
            # before the chief read the result, which lives on that worker.
            # Only its push records are lost; a ps failure is raised.
            if _PS_TASK.search(str(e)) or not _WORKER_TASK.search(str(e)):
                raise
            self.strategy._lost_results += 1
            logging.warning(
                "DownpourParameterServerStrategy: the result of a finished "
                "closure is lost with its worker (%s); its pushes count, "
                "its push records are missing.",
                str(e).strip().splitlines()[0][:200],
            )
            return
        self.strategy._record(result)

    def _wait_all(self):
        if not self._inflight:
            return
        self.strategy.coordinator.join()
        while self._inflight:
            self._collect_oldest()

    def _dispatch(self, final):
        strategy = self.strategy
        length = strategy.steps_per_closure
        if strategy.protocol == "sync":
            num_workers = strategy.extended.num_workers
            unit = num_workers * length
            while self._pending_steps >= unit or (
                final and self._pending_steps > 0
            ):
                for _ in range(num_workers):
                    self._schedule(length)
                self._wait_all()
                self._pending_steps = max(self._pending_steps - unit, 0)
            return
        while self._pending_steps > 0:
            if self._pending_steps < length and not final:
                return
            steps = min(length, self._pending_steps)
            warm = strategy._warm_steps_left() > 0
            self._schedule(steps)
            self._pending_steps -= steps
            if warm:
                self._wait_all()
                strategy._warm_steps_done += steps
            while len(self._inflight) > strategy.max_inflight:
                self._collect_oldest()

    def _read_logs(self, force):
        now = time.monotonic()
        if (
            not force
            and self._logs is not None
            and now - self._logs_time < _LOGS_INTERVAL_SECONDS
        ):
            return self._logs
        if self._read_metrics is None:
            model = self.model

            @tf.function
            def read_metrics():
                results = {}
                for metric in model.metrics:
                    result = metric.result()
                    if isinstance(result, dict):
                        results.update(result)
                    else:
                        results[metric.name] = result
                return results

            self._read_metrics = read_metrics
        logs = dict(self._read_metrics())
        logs.update(self.strategy._staleness_logs())
        self._logs, self._logs_time = logs, now
        return logs


class Explained:
    """Re-raises a ps failure with `explain`'s message."""

    def __init__(self, coordinator=None):
        self.coordinator = coordinator

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        clearer = explain(exc, self.coordinator)
        if clearer is None:
            return False
        raise clearer from exc
