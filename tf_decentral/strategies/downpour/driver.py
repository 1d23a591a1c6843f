"""The chief side of Downpour: the strategy's extended and Keras' train step.

`DownpourExtended` is `DownpourParameterServerStrategy`'s implementation:
TensorFlow's parameter-server extended with Downpour's variable placement
(`placement.py`), the run's configuration (`config.RunConfig`) and state
(closure ids, warm start, `stats.PushStats`), and the Keras `FitDriver`
hooks, by which `fit` uses a `TrainFunction` instead of Keras' train
function.

`fit` calls `train_function(iterator)` once per `steps_per_execution`
batches and expects the logs back. Here a call only counts the batches as
pending and schedules closures on the `ClusterCoordinator` (one closure =
`lcm(n_fetch, n_push)` steps of one worker, `worker.py`): it returns at
once while at most `max_inflight` closures' pushes may be unapplied; past
that it waits until half of them are applied. The chief never waits for a
closure's result (TF's coordinator copies it, one scalar, on the worker's
own thread); it learns what was applied from the applier's records, drained
in bulk from ps task 0 (`stats.py`) only when it reaches that limit, for
the logs (every 0.5 s) and at the end of an epoch, so a slow closure holds
up nothing but itself. At the end of each epoch (`end_epoch`,
called by the Keras hook before the epoch's callbacks) the remaining batches
are scheduled and every closure is waited for, so that epoch logs,
`ModelCheckpoint` and `BackupAndRestore` see every committed update.
`"sync"` schedules one closure per worker at a time and waits for all of
them (S-PSGD's barrier); warm-up steps run one closure at a time. The
pushes' applier (`applier.py`) runs from the first closure scheduled to the
end of the epoch; every wait for closures also watches it (a failed applier
raises instead of leaving closures waiting forever).
"""

import contextlib
import re
import threading
import time

import tensorflow as tf

from tf_decentral import _tf_private
from tf_decentral.cluster import lifecycle
from tf_decentral.strategies import _collective
from tf_decentral.strategies import _keras_hooks
from tf_decentral.strategies.downpour import placement
from tf_decentral.strategies.downpour import ps as ps_lib
from tf_decentral.strategies.downpour import stats as stats_lib
from tf_decentral.strategies.downpour import worker as worker_lib

# Seconds between two reads of the metrics from the ps tasks for the
# per-batch logs (the epoch logs are always read).
_LOGS_INTERVAL_SECONDS = 0.5
_PS_TASK = re.compile(r"/job:ps/replica:\d+/task:(\d+)")
_WORKER_TASK = re.compile(r"/job:worker/replica:\d+/task:(\d+)")


class DownpourExtended(placement.PlacementExtended, _keras_hooks.FitDriver):
    """Implementation of `DownpourParameterServerStrategy`.

    Args:
        container_strategy: The strategy.
        cluster_resolver: Its cluster resolver.
        config: Its `config.RunConfig`.

    Attributes:
        config: The `config.RunConfig`.
        coordinator: The strategy's `ClusterCoordinator` (set by the
            strategy once it is constructed).
        ps_addresses: The ps tasks' addresses, in task order.
        push_stats: The `stats.PushStats` of every finished closure.
        last_train_function: The `TrainFunction` of the model trained last,
            or None.
    """

    def __init__(self, container_strategy, cluster_resolver, config):
        super().__init__(
            container_strategy,
            cluster_resolver,
            config.options.max_shard_bytes,
        )
        self.config = config
        self.coordinator = None
        spec = cluster_resolver.cluster_spec().as_dict()
        self.ps_addresses = tuple(spec.get("ps", ()))
        self.push_stats = stats_lib.PushStats()
        self.last_train_function = None
        self._closures = 0
        self._warm_steps_done = 0
        self._pinned = threading.local()

    # -- variables ----------------------------------------------------------

    @contextlib.contextmanager
    def pinned_creation(self):
        """Variables created in this block go exactly where `tf.device` says.

        For Downpour's own bookkeeping variables (counters, buffers), which
        must not be placed like model variables, even inside the scope.
        """
        previous = getattr(self._pinned, "on", False)
        self._pinned.on = True
        try:
            yield
        finally:
            self._pinned.on = previous

    def create_variable(self, next_creator, **kwargs):
        if getattr(self._pinned, "on", False):
            kwargs.pop("colocate_with", None)
            return next_creator(**kwargs)
        return super().create_variable(next_creator, **kwargs)

    # -- run state ----------------------------------------------------------

    def new_closure_id(self) -> int:
        """Returns the next closure id (1, 2, ... in scheduling order)."""
        self._closures += 1
        return self._closures

    def warm_steps_left(self) -> int:
        """Steps still to run one closure at a time (the warm start)."""
        return self.config.warm_start_steps - self._warm_steps_done

    def count_warm_steps(self, steps: int) -> None:
        """Counts `steps` run as part of the warm start."""
        self._warm_steps_done += steps

    def ps_stats(self) -> dict[str, int]:
        """The ps counters of the model trained last (see the strategy).

        Raises:
            RuntimeError: If no model has been trained yet.
        """
        if self.last_train_function is None:
            raise RuntimeError(
                "`ps_stats()` needs a model trained with this strategy. Call "
                "`model.fit(...)` first."
            )
        with self.explained():
            return self.last_train_function.state.stats()

    # -- FitDriver (the Keras hooks) ------------------------------------------

    def keras_train_function(self, model):
        worker_lib.check_model(model, self)
        return TrainFunction(self, model)

    def keras_epoch_end(self, model, logs):
        del logs
        function = getattr(model, "train_function", None)
        if isinstance(function, TrainFunction) and function.active:
            return function.end_epoch()
        return None

    def keras_error_context(self):
        return self.explained()

    def explained(self):
        """A context that re-raises a lost ps task's error clearly."""
        return explain_errors(self.coordinator, self.ps_addresses)

    def keras_optimizer_variables(self, variables):
        return [part for v in variables for part in placement.shards_of(v)]


class ChiefDataset:
    """What `experimental_distribute_dataset` gives Keras on the chief.

    Iterating it iterates the dataset; the iterator remembers its dataset so
    that the train function can send the dataset to the workers.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        iterator = iter(self.dataset)
        iterator._tfd_dataset = self.dataset
        return iterator


def explain(error, coordinator=None, ps_addresses=()):
    """Returns `error` with a clear message if a ps task failed, else None.

    A closure cancelled because another one failed reports only its
    cancellation; the coordinator (if given) knows the root error. An error
    naming no task ("RemoteExecuteNode::RunAsync") is a lost ps if one of
    `ps_addresses` refuses connections."""
    if isinstance(error, tf.errors.CancelledError) and coordinator is not None:
        try:
            coordinator.join()
        except _collective.REMOTE_FUNCTION_ERRORS as root:
            error = root
    text = str(error)
    if not isinstance(error, _collective.REMOTE_FUNCTION_ERRORS):
        return None
    match = _PS_TASK.search(text)
    lost = [] if match or _WORKER_TASK.search(text) else (
        _collective.unreachable(ps_addresses)
    )
    if not (match or lost):
        return None
    task = match.group(1) if match else lost[0]
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    message = (
        f"DownpourParameterServerStrategy lost parameter server "
        f"ps:{task} ({type(error).__name__}: {first_line[:300]}). "
        "The parameters and optimizer state it held are gone, so training "
        "cannot continue. Restart the ps task and this chief; with a "
        "`keras.callbacks.BackupAndRestore` callback, `fit` resumes from the "
        "last completed epoch."
    )
    return type(error)(None, None, message)


class TrainFunction:
    """`model.train_function` of a model trained by a Downpour strategy."""

    def __init__(self, extended, model):
        self.extended = extended
        self.model = model
        self.state = None
        self.builder = None
        self.iterator = None  # The per-worker iterator closures read.
        self.closure_steps = None  # Set with `state`, from the model's
        self.max_pushes = None  # `steps_per_execution`.
        self.active = False
        self._dataset = None
        self._consume_chief_batches = False
        self._pending_steps = 0
        self._epoch_batches = None  # A finite dataset's batches per epoch.
        self._epoch_steps = 0  # Steps counted in the current epoch.
        # Fresh pushes the scheduled closures make, and those applied so far
        # (this model's: the strategy's `push_stats` may count others').
        self._scheduled_pushes = 0
        self._applied_pushes = 0
        # `RemoteValue`s of the closures scheduled since the last join.
        self._results = []
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
            elif self._epoch_batches is not None:
                # Keras' last execution of an epoch runs what is left of a
                # finite dataset, fewer than `steps_per_execution` batches.
                steps = min(steps, self._epoch_batches - self._epoch_steps)
            if not self.active:
                self.active = True
                self.extended.push_stats.start_epoch()
            self._epoch_steps += steps
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
            # Every closure has finished: so has every push they sent.
            self.state.applier.stop()
            # softsync/sync: apply what is still buffered, so the epoch's
            # logs, checkpoint and the final model contain every push.
            self.state.flush_pending()
            self.active = False
            self._epoch_steps = 0
            return self._read_logs(force=True)

    # -- internals ----------------------------------------------------------

    def _explained(self):
        return self.extended.explained()

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
        config = self.extended.config
        if self.state is None:
            spe = int(self.model.steps_per_execution)
            self.closure_steps = config.closure_steps(spe)
            self.max_pushes = config.pushes_per_closure(spe)
            self.state = ps_lib.ParameterServerState(
                self.model,
                protocol=config.protocol,
                required=config.required_pushes,
                staleness_lr=config.staleness_lr,
                ring_size=config.ring_size_for(spe),
                num_workers=config.num_workers,
                pinned=self.extended.pinned_creation,
            )
            self.builder = worker_lib.ClosureBuilder(
                self.model,
                self.state,
                n_fetch=config.n_fetch,
                n_push=config.n_push,
                max_pushes=self.max_pushes,
            )
            self.extended.last_train_function = self
        if dataset is not self._dataset:
            self._wait_all()
            self.iterator = self._per_worker_iterator(dataset)
            self._dataset = dataset
            cardinality = int(dataset.cardinality())
            self._consume_chief_batches = (
                cardinality == tf.data.UNKNOWN_CARDINALITY
            )
            self._epoch_batches = cardinality if cardinality > 0 else None

    def _per_worker_iterator(self, dataset):
        num_workers = self.extended.num_workers
        cardinality = int(dataset.cardinality())
        if 0 <= cardinality < num_workers:
            raise ValueError(
                "The dataset must have at least one batch per worker: each "
                "of the "
                f"{num_workers} workers reads every {num_workers}-th batch. "
                f"Received: a dataset of {cardinality} batch(es). Use a "
                "smaller `batch_size` or more data."
            )
        graph_def = _tf_private.serialize_dataset(dataset)
        size = int(tf.strings.length(graph_def))
        lifecycle.warn_if_pipeline_large(size, num_workers)
        element_spec = dataset.element_spec

        worker_index = (
            tf.distribute.coordinator.experimental_get_current_worker_index
        )

        def dataset_fn():
            worker = worker_index()
            shard = _tf_private.deserialize_dataset(graph_def, element_spec)
            return shard.shard(num_workers, worker).repeat()

        coordinator = self.extended.coordinator
        return iter(coordinator.create_per_worker_dataset(dataset_fn))

    def _schedule(self, num_steps):
        closure_id = self.extended.new_closure_id()
        function = self.builder.function(num_steps)
        # The chief never fetches the result (the pushes' records come from
        # the applier), but keeps it until `join`: TF copies a closure's
        # result only while someone holds it, and that copy is what waits
        # for the closure to end (see `worker.py`).
        self._results.append(
            self.extended.coordinator.schedule(
                function,
                args=(self.iterator, tf.constant(closure_id, tf.int64)),
            )
        )
        self._scheduled_pushes += self.builder.pushes(num_steps)
        # After `schedule`, which traced the closure and so its pushes.
        self.state.applier.start()

    def _collect(self, block=False):
        """Records what the applier applied since the last call; with
        `block`, first waits for at least one push to be applied (or for a
        closure to fail: then raises its error). A closure that has
        finished has sent its pushes, which the applier applies whether or
        not the closure waited for them. Without `block` it also reads the
        records left when the applier stopped (the end of an epoch)."""
        applier = self.state.applier
        if block and not applier.running:
            return
        coordinator = self.extended.coordinator

        def raise_failed_closure():
            coordinator.done()  # raises a failed closure's error
            return False  # pushes sent are applied: keep waiting

        records = applier.wait(
            lambda: applier.drain(block=block),
            stop_waiting=raise_failed_closure if block else None,
        )
        fresh = self.extended.push_stats.record(records, self.max_pushes)
        self._applied_pushes += fresh

    def _wait_for_pushes(self, limit):
        """If more than `limit` scheduled pushes may be unapplied, waits
        until at most `limit // 2` are.

        Costs no round trip while under the limit: the count of applied
        pushes is only refreshed (one drain of the applier's records, one
        round trip to ps task 0) when the limit is reached, and the wait
        goes down to half of it, so that one wait serves several closures
        (the workers still have the other half queued meanwhile).
        """
        if self._scheduled_pushes - self._applied_pushes <= limit:
            return
        while self._scheduled_pushes - self._applied_pushes > limit // 2:
            self._collect(block=True)

    def _wait_all(self, collect=True):
        """Waits for every scheduled closure; with `collect`, then records
        the pushes applied so far (one round trip to ps task 0)."""
        if not self._results:
            return
        self.state.applier.wait(self.extended.coordinator.join)
        self._results.clear()
        if collect:
            self._collect()

    def _dispatch(self, final):
        extended = self.extended
        config = extended.config
        length = self.closure_steps
        if config.protocol == "sync":
            num_workers = extended.num_workers
            unit = num_workers * length
            while self._pending_steps >= unit or (
                final and self._pending_steps > 0
            ):
                for _ in range(num_workers):
                    self._schedule(length)
                # The round's barrier; its records are read with the logs.
                self._wait_all(collect=False)
                self._pending_steps = max(self._pending_steps - unit, 0)
            return
        while self._pending_steps > 0:
            if self._pending_steps < length and not final:
                return
            steps = min(length, self._pending_steps)
            warm = extended.warm_steps_left() > 0
            self._schedule(steps)
            self._pending_steps -= steps
            if warm:
                # One closure at a time, each fetching after every earlier
                # push is applied.
                self._wait_all()
                self._wait_for_pushes(0)
                extended.count_warm_steps(steps)
            self._wait_for_pushes(config.max_inflight * self.max_pushes)

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
        self._collect()
        logs.update(self.extended.push_stats.epoch_logs())
        self._logs, self._logs_time = logs, now
        return logs


@contextlib.contextmanager
def explain_errors(coordinator=None, ps_addresses=()):
    """Re-raises a ps failure with `explain`'s message."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised, maybe explained
        clearer = explain(exc, coordinator, ps_addresses)
        if clearer is None:
            raise
        raise clearer from exc
