"""DownpourParameterServerStrategy: asynchronous SGD on parameter servers.

DistBelief's Downpour SGD (Dean et al. 2012) and the parameter-server
protocols compared by Gupta et al. (2016), as a `tf.distribute` strategy that
Keras 3's unmodified `compile` / `fit` / `evaluate` / `predict` / `save` use
on the chief of a TensorFlow cluster with `"chief"`, `"worker"` and `"ps"`
tasks. Keras 3 has no parameter-server path of its own
(keras-team/keras#18624).

How it works. The model's variables live on the ps tasks (see
`_downpour_placement`: whole variables spread by size, large ones split in
row shards; optimizer slots beside their shard). The chief only schedules
*closures* (`tf.distribute.experimental.coordinator.ClusterCoordinator`);
each closure runs `lcm(n_fetch, n_push)` steps on one worker, on that
worker's shard of the data: it fetches the parameters every `n_fetch` steps
into local tensors, takes local steps, accumulates its gradients and pushes
them every `n_push` steps. A push runs the compiled Keras optimizer on the ps
tasks, shard by shard (`_downpour_ps`); only gradients and parameters cross
the network. Terms (fetch, push, clock, staleness, apply, duplicate) are
defined in `_downpour_ps`.

Protocols:

- `"async"`: Downpour / A-PSGD. Every push is applied on arrival.
- `"softsync"`: Rudra's n-softsync. The ps averages every `softsync_n`
  pushes (from any workers) and applies the average.
- `"sync"`: S-PSGD. Each worker computes one push from the same parameters;
  the ps applies their average once all have arrived, then the next round
  starts. One update consumes `num_workers * n_push` batches.

References:
    Dean, Corrado, Monga, Chen, Devin, Le, Mao, Ranzato, Senior, Tucker,
    Yang, Ng. "Large Scale Distributed Deep Networks." NIPS 2012.

    Gupta, Zhang, Wang. "Model Accuracy and Runtime Tradeoff in Distributed
    Deep Learning: A Systematic Study." ICDM 2016.
"""

import collections
import contextlib
import dataclasses
import math
import os
import threading

import keras
import numpy as np
import tensorflow as tf

from tf_decentral._tf_private import distribute_lib
from tf_decentral._tf_private import parameter_server_strategy_v2
from tf_decentral.strategies import _keras_hooks
from tf_decentral.strategies.downpour import driver as driver_lib
from tf_decentral.strategies.downpour import placement
from tf_decentral.strategies.downpour import ps as ps_lib

PROTOCOLS = ps_lib.PROTOCOLS
PushRecord = driver_lib.PushRecord
RowShardedVariable = placement.RowShardedVariable

_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222", '
    '"host2:2222"], "ps": ["host3:2222"]}, "task": {"type": "chief", '
    '"index": 0}}'
)
# How many push records `push_records` keeps (the newest).
_MAX_RECORDS = 100_000


@dataclasses.dataclass(frozen=True)
class DownpourOptions:
    """Tuning knobs of `DownpourParameterServerStrategy`.

    Attributes:
        max_shard_bytes: A variable larger than this many bytes is split
            along its first axis into row shards of at most this size (at
            most one per ps task); None never splits. At least 1.
        max_inflight_per_worker: Closures scheduled but not finished, per
            worker, before a call of the train function waits for the
            oldest; at least 1. More hides latency and raises staleness.

    Example:
        >>> from tf_decentral.strategies import downpour
        >>> downpour.DownpourOptions(max_shard_bytes=4 << 20)
        DownpourOptions(max_shard_bytes=4194304, max_inflight_per_worker=2)
    """

    max_shard_bytes: int | None = 1 << 20
    max_inflight_per_worker: int = 2

    def __post_init__(self):
        if self.max_shard_bytes is not None and not _is_int_at_least(
            self.max_shard_bytes, 1
        ):
            raise ValueError(
                "`max_shard_bytes` must be an integer >= 1 or None. "
                f"Received: max_shard_bytes={self.max_shard_bytes!r}"
            )
        if not _is_int_at_least(self.max_inflight_per_worker, 1):
            raise ValueError(
                "`max_inflight_per_worker` must be an integer >= 1. "
                "Received: max_inflight_per_worker="
                f"{self.max_inflight_per_worker!r}"
            )


def _is_int_at_least(value, low):
    return (
        isinstance(value, int) and not isinstance(value, bool) and value >= low
    )


class _DownpourExtended(placement.PlacementExtended):
    """Implementation of `DownpourParameterServerStrategy`."""

    def __init__(self, container_strategy, cluster_resolver, max_shard_bytes):
        super().__init__(container_strategy, cluster_resolver, max_shard_bytes)
        self._pinned = threading.local()

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

    def _create_variable(self, next_creator, **kwargs):
        if getattr(self._pinned, "on", False):
            kwargs.pop("colocate_with", None)
            return next_creator(**kwargs)
        return super()._create_variable(next_creator, **kwargs)


class DownpourParameterServerStrategy(
    _keras_hooks.FitDriver,
    parameter_server_strategy_v2.ParameterServerStrategyV2,
):
    """Downpour SGD and the parameter-server protocols, for Keras `fit`.

    Run it on the chief of a cluster with `"worker"` and `"ps"` tasks; every
    worker and ps task runs `tf_decentral.cluster.run_server()`. On the
    chief, the usual Keras code:

    ```python
    strategy = tfd.DownpourParameterServerStrategy(n_fetch=1, n_push=2)
    with strategy.scope():
        model = make_model()
        model.compile(optimizer="adagrad", loss=..., metrics=[...])
    model.fit(x, y, batch_size=64, epochs=5)   # progress bar, callbacks
    model.evaluate(x_test, y_test)             # on the chief
    model.save("model.keras")
    ```

    Semantics of `fit`:

    - The data (NumPy arrays or a `tf.data.Dataset`, batched by `fit`) is
      sent to every worker as a pipeline; worker `i` of `n` reads batches
      `i, i + n, ...` and repeats them. A Keras step is one batch read by
      some worker, so `steps_per_epoch` counts batches over all workers.
    - Closures of `lcm(n_fetch, n_push)` steps run asynchronously on the
      workers; at the end of every epoch the chief waits for them, so the
      epoch's logs, `ModelCheckpoint` and `BackupAndRestore` see every
      committed update. Per-batch logs are read from the ps tasks at most
      every 0.5 s and lag behind the workers.
    - `"softsync"`/`"sync"`: at the end of every epoch, pushes still
      buffered on the ps (fewer than `softsync_n`, or than the number of
      workers after a worker died) are applied as one update with their own
      average (`ps_stats()["flushes"]`), so that no accepted gradient is
      left out of the epoch's checkpoint or the final model.
    - A push is the sum of the worker's gradients since its previous push.
      Pushes are idempotent: each has an id, and the ps drops a push whose
      id it has accepted already, so a closure re-run after its worker died
      (TensorFlow re-runs the closures of a failed worker elsewhere) never
      applies the same push twice. A push interrupted by the death of its
      worker may be lost, or partly applied if the worker died while its
      shards were being updated.
    - Metrics and non-trainable state (batch normalization statistics) are
      committed once per closure, with its last push; the last writer wins
      for non-trainable state.
    - The logs hold the model's metrics plus `staleness` (mean over the
      epoch's pushes) and `staleness_max`; `staleness_histogram()` counts
      every push by staleness.

    Args:
        cluster_resolver: A `tf.distribute.cluster_resolver.ClusterResolver`
            with `"worker"` and `"ps"` jobs; None reads `TF_CONFIG`.
        n_fetch: A worker fetches the parameters every `n_fetch` steps; at
            least 1.
        n_push: A worker pushes its accumulated gradient every `n_push`
            steps; at least 1.
        protocol: `"async"`, `"softsync"` or `"sync"` (see the module
            docstring).
        softsync_n: For `"softsync"` only (and required there): how many
            pushes the ps averages per update, in `[1, num_workers]`.
        staleness_lr: If True, each update uses the learning rate divided by
            its staleness (the mean staleness of the averaged pushes for
            softsync).
        warm_start_steps: The first `warm_start_steps` steps of the
            strategy's life run one closure at a time, so that no gradient
            is stale (the "warm start" of Dean et al.). At least 0; not with
            `"sync"`. Dean et al. train one replica alone for a while; here
            each warm-up closure runs on whichever worker is free, on that
            worker's shard. The updates are the same serial, staleness-0
            SGD (what the warm start is for), the data covers every shard,
            and the warm-up survives the death of any one worker.
        options: A `DownpourOptions`, or None for the defaults.

    Raises:
        ValueError: If an argument is out of range, or the cluster has no
            `"ps"` or `"worker"` task, or this process is a worker or ps task.
        TypeError: If `options` is not a `DownpourOptions`.
    """

    def __init__(
        self,
        cluster_resolver=None,
        *,
        n_fetch: int = 1,
        n_push: int = 1,
        protocol: str = "async",
        softsync_n: int | None = None,
        staleness_lr: bool = False,
        warm_start_steps: int = 0,
        options: DownpourOptions | None = None,
    ):
        _check_arguments(
            n_fetch,
            n_push,
            protocol,
            softsync_n,
            staleness_lr,
            warm_start_steps,
        )
        if options is None:
            options = DownpourOptions()
        if not isinstance(options, DownpourOptions):
            raise TypeError(
                "`options` must be a `DownpourOptions` or None. "
                f"Received: options={options!r}"
            )
        if cluster_resolver is None:
            cluster_resolver = (
                tf.distribute.cluster_resolver.TFConfigClusterResolver()
            )
        num_workers = _check_cluster(cluster_resolver)
        if protocol == "softsync" and softsync_n > num_workers:
            raise ValueError(
                "`softsync_n` must be at most the number of workers "
                f"({num_workers}). Received: softsync_n={softsync_n}"
            )
        self.n_fetch = n_fetch
        self.n_push = n_push
        self.protocol = protocol
        self.softsync_n = softsync_n
        self.staleness_lr = staleness_lr
        self.warm_start_steps = warm_start_steps
        self.options = options
        self.steps_per_closure = math.lcm(n_fetch, n_push)
        self.max_inflight = options.max_inflight_per_worker * num_workers
        self._max_pushes = self.steps_per_closure // n_push
        self._required_pushes = {
            "async": 1,
            "softsync": softsync_n,
            "sync": num_workers,
        }[protocol]
        self._ring_size = max(
            64, 4 * self._max_pushes * (self.max_inflight + num_workers + 1)
        )
        self._closures = 0
        self._lost_results = 0
        self._warm_steps_done = 0
        self._histogram = collections.Counter()
        self._epoch_staleness = collections.Counter()
        self._records = collections.deque(maxlen=_MAX_RECORDS)
        self._latest = None

        # What `ParameterServerStrategyV2.__init__` does, with our extended.
        self._cluster_resolver = cluster_resolver
        self._verify_args_and_config(cluster_resolver)
        self._cluster_coordinator = None
        self._connect_to_cluster(coordinator_name="chief")
        extended = _DownpourExtended(
            self, cluster_resolver, options.max_shard_bytes
        )
        distribute_lib.Strategy.__init__(self, extended)
        self._should_use_with_coordinator = True
        self._canonicalize_devices = False
        self._is_parameter_server_strategy_v2 = True
        self.coordinator = (
            tf.distribute.experimental.coordinator.ClusterCoordinator(self)
        )
        _keras_hooks.install()

    # -- public -------------------------------------------------------------

    @property
    def num_workers(self) -> int:
        """The number of worker tasks."""
        return self.extended.num_workers

    @property
    def num_ps(self) -> int:
        """The number of parameter-server tasks."""
        return self.extended.num_ps

    def staleness_histogram(self) -> dict[int, int]:
        """Returns `{staleness: number of pushes}` over every accepted push.

        Staleness 1 means the gradient was computed on the parameters it
        updated; see `_downpour_ps` for the definition.
        """
        return dict(sorted(self._histogram.items()))

    def push_records(self) -> list:
        """Returns a `PushRecord` per push, oldest first (the newest 100k)."""
        return list(self._records)

    def ps_stats(self) -> dict[str, int]:
        """Returns the ps counters of the model trained last.

        Keys: `clock` (updates applied), `pushes` (pushes accepted),
        `duplicates` (pushes dropped as repeats), `pending` (pushes waiting
        in the softsync/sync buffer), `flushes` (partial updates: at the end
        of an epoch the ps applies the average of the fewer than `required`
        pushes still buffered), `flushed` (the pushes those contained) and
        `iterations` (the optimizer's, equal to `clock`). In every protocol
        `pushes == (clock - flushes) * required + flushed + pending`, with
        `required` 1 (async), `softsync_n` or the number of workers (sync);
        `pending` is 0 after `fit`.

        Raises:
            RuntimeError: If no model has been trained yet.
        """
        if self._latest is None:
            raise RuntimeError(
                "`ps_stats()` needs a model trained with this strategy. Call "
                "`model.fit(...)` first."
            )
        with driver_lib.Explained(self.coordinator):
            return self._latest.state.stats()

    def experimental_distribute_dataset(self, dataset, options=None):
        """Returns `dataset` for Keras on the chief.

        `fit` ships the dataset to the workers itself; `evaluate` and
        `predict` read it on the chief.
        """
        del options
        return _ChiefDataset(dataset)

    def distribute_datasets_from_function(self, dataset_fn, options=None):
        """Not supported: `fit` distributes the dataset itself.

        Raises:
            NotImplementedError: Always, saying what to do instead.
        """
        del dataset_fn, options
        raise NotImplementedError(
            "DownpourParameterServerStrategy ships the dataset given to "
            "`model.fit` to every worker itself: worker i of n reads batches "
            "i, i + n, ... of it. Pass the dataset to `model.fit` (a "
            "`tf.data.Dataset` or arrays, batched by `fit`). Received: a call "
            "to `distribute_datasets_from_function`."
        )

    # -- FitDriver (the Keras hooks) ------------------------------------------

    def keras_train_function(self, model):
        _check_model(self, model)
        return driver_lib.TrainFunction(self, model)

    def keras_epoch_end(self, model, logs):
        del logs
        function = getattr(model, "train_function", None)
        if isinstance(function, driver_lib.TrainFunction) and function.active:
            return function.end_epoch()
        return None

    def keras_error_context(self):
        return driver_lib.Explained(self.coordinator)

    def keras_optimizer_variables(self, variables):
        return [part for v in variables for part in placement.shards_of(v)]

    # -- internals used by the driver -----------------------------------------

    def _new_closure_id(self) -> int:
        self._closures += 1
        return self._closures

    def _warm_steps_left(self) -> int:
        return self.warm_start_steps - self._warm_steps_done

    def _start_epoch(self):
        self._epoch_staleness = collections.Counter()

    def _record(self, result):
        worker = int(result["worker"])
        closure = int(result["closure"])
        for push, (staleness, fresh) in enumerate(
            zip(result["staleness"].tolist(), result["fresh"].tolist())
        ):
            self._records.append(
                PushRecord(closure, worker, push, int(staleness), bool(fresh))
            )
            if fresh:
                self._histogram[int(staleness)] += 1
                self._epoch_staleness[int(staleness)] += 1

    def _staleness_logs(self) -> dict:
        counts = self._epoch_staleness
        total = sum(counts.values())
        if not total:
            return {}
        mean = sum(s * c for s, c in counts.items()) / total
        return {"staleness": float(mean), "staleness_max": float(max(counts))}


class StalenessHistogram(keras.callbacks.Callback):
    """Writes each epoch's staleness histogram for TensorBoard.

    The epoch logs of a Downpour `fit` carry the mean and maximum staleness
    as scalars (which Keras' `TensorBoard` callback plots); this callback
    adds the whole distribution, as a `tf.summary.histogram` named
    `"staleness"` with the epoch as step, in `log_dir/train` (next to
    `keras.callbacks.TensorBoard(log_dir)`'s own events).

    Args:
        log_dir: The TensorBoard log directory.

    Example:
        >>> from tf_decentral.strategies import downpour
        >>> callbacks = [
        ...     keras.callbacks.TensorBoard("logs"),
        ...     downpour.StalenessHistogram("logs"),
        ... ]
        >>> callbacks[1].log_dir
        'logs'
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        strategy = self.model.distribute_strategy
        if not isinstance(strategy, DownpourParameterServerStrategy):
            return
        counts = strategy._epoch_staleness
        if not counts:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, "train")
            )
        values = np.repeat(
            np.array(list(counts), np.float32), list(counts.values())
        )
        with self._writer.as_default():
            tf.summary.histogram("staleness", values, step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _ChiefDataset:
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


def _check_arguments(
    n_fetch, n_push, protocol, softsync_n, staleness_lr, warm_start_steps
):
    for name, value in (("n_fetch", n_fetch), ("n_push", n_push)):
        if not _is_int_at_least(value, 1):
            raise ValueError(
                f"`{name}` must be an integer >= 1. Received: {name}={value!r}"
            )
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"`protocol` must be one of {PROTOCOLS}. "
            f"Received: protocol={protocol!r}"
        )
    if protocol == "softsync":
        if softsync_n is None:
            raise ValueError(
                '`softsync_n` is required with protocol="softsync": the '
                "number of pushes the ps averages per update. Received: "
                "softsync_n=None"
            )
        if not _is_int_at_least(softsync_n, 1):
            raise ValueError(
                "`softsync_n` must be an integer >= 1. "
                f"Received: softsync_n={softsync_n!r}"
            )
    elif softsync_n is not None:
        raise ValueError(
            '`softsync_n` is only used with protocol="softsync". Received: '
            f"softsync_n={softsync_n!r} with protocol={protocol!r}"
        )
    if protocol == "sync" and n_fetch != n_push:
        raise ValueError(
            'With protocol="sync" every push must be computed from freshly '
            "fetched parameters, so `n_fetch` must equal `n_push`. Received: "
            f"n_fetch={n_fetch}, n_push={n_push}"
        )
    if not isinstance(staleness_lr, bool):
        raise ValueError(
            "`staleness_lr` must be True or False. "
            f"Received: staleness_lr={staleness_lr!r}"
        )
    if not _is_int_at_least(warm_start_steps, 0):
        raise ValueError(
            "`warm_start_steps` must be an integer >= 0. "
            f"Received: warm_start_steps={warm_start_steps!r}"
        )
    if protocol == "sync" and warm_start_steps:
        raise ValueError(
            'protocol="sync" has no stale gradients to warm up from, so '
            "`warm_start_steps` must be 0. "
            f"Received: warm_start_steps={warm_start_steps}"
        )


def _check_cluster(cluster_resolver) -> int:
    """Validates the cluster; returns its number of workers."""
    jobs = cluster_resolver.cluster_spec().as_dict()
    if not jobs:
        raise ValueError(
            "DownpourParameterServerStrategy needs a cluster with worker and "
            "ps tasks, but the cluster spec is empty. Set `TF_CONFIG` on "
            "every task, e.g. on the chief: "
            f"TF_CONFIG='{_TF_CONFIG_EXAMPLE}', or pass `cluster_resolver`."
        )
    for job in ("ps", "worker"):
        if not jobs.get(job):
            raise ValueError(
                f'The cluster must have at least one "{job}" task. Received: '
                f"jobs {sorted(jobs)}. Add a {job!r} job, e.g. "
                f"TF_CONFIG='{_TF_CONFIG_EXAMPLE}'."
            )
    task_type = cluster_resolver.task_type
    if task_type in ("worker", "ps"):
        raise ValueError(
            "DownpourParameterServerStrategy runs on the chief only; "
            f"{task_type} tasks serve the chief. Received: task "
            f"{task_type}:{cluster_resolver.task_id}. Call "
            "`tf_decentral.cluster.run_server()` at the top of the script "
            "(it blocks on worker and ps tasks)."
        )
    return len(jobs["worker"])


def _check_model(strategy, model):
    cls = type(model)
    if _keras_hooks.overrides_train_step(model):
        raise ValueError(
            "DownpourParameterServerStrategy runs the compiled loss, metrics "
            "and optimizer itself, statelessly on the workers, so it cannot "
            f"run a custom `train_step`. Received: {cls.__name__} overrides "
            "`train_step`. Remove the override; custom loss logic can go in "
            "`compute_loss`, which Downpour calls."
        )
    optimizer = model.optimizer
    if optimizer is None:
        raise ValueError(
            "The model must be compiled with an optimizer. Received: "
            "optimizer=None"
        )
    if type(optimizer).__name__ == "LossScaleOptimizer":
        raise ValueError(
            "DownpourParameterServerStrategy does not support "
            "`LossScaleOptimizer` (mixed float16). Received: "
            f"optimizer={optimizer.name}"
        )
    if optimizer.gradient_accumulation_steps:
        raise ValueError(
            "The optimizer's `gradient_accumulation_steps` is not supported; "
            "use the strategy's `n_push` instead. Received: "
            "gradient_accumulation_steps="
            f"{optimizer.gradient_accumulation_steps}"
        )
    if optimizer.use_ema:
        raise ValueError(
            "The optimizer's `use_ema=True` is not supported by "
            "DownpourParameterServerStrategy. Received: use_ema=True"
        )
    if getattr(optimizer, "_distribution_strategy", None) is not strategy:
        raise ValueError(
            "The optimizer must be created inside `strategy.scope()` (pass "
            "it, or its name, to `compile` inside the scope) so that its "
            "variables live beside the parameters on the ps tasks."
        )
