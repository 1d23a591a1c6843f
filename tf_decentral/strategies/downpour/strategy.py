"""DownpourParameterServerStrategy: asynchronous SGD on parameter servers.

DistBelief's Downpour SGD (Dean et al. 2012) and the parameter-server
protocols compared by Gupta et al. (2016), as a `tf.distribute` strategy that
Keras 3's unmodified `compile` / `fit` / `evaluate` / `predict` / `save` use
on the chief of a TensorFlow cluster with `"chief"`, `"worker"` and `"ps"`
tasks. Keras 3 has no parameter-server path of its own
(keras-team/keras#18624).

How it works. The model's variables live on the ps tasks (see
`placement.py`: whole variables spread by size, large ones split in row
shards; optimizer slots beside their shard). The chief only schedules
*closures* (`tf.distribute.experimental.coordinator.ClusterCoordinator`);
each closure runs `lcm(n_fetch, n_push)` steps on one worker (or, for a
model compiled with `steps_per_execution=k`, the smallest multiple of that
which is at least `k`, so that one dispatch serves `k` steps, as in
TensorFlow's `ParameterServerStrategy`), on that worker's shard of the
data: it fetches the parameters every `n_fetch` steps into local tensors,
takes local steps, accumulates its gradients and pushes them every
`n_push` steps. A push hands its gradient to the applier, a loop
the chief runs on the ps tasks, which runs the compiled Keras optimizer
there, shard by shard (`applier.py`, `ps.py`): every push is applied exactly
once, even if its worker dies; only gradients and parameters cross the
network. Terms (fetch, push, clock, staleness, apply, duplicate) are defined
in `ps.py`. The chief's side (scheduling, epochs, warm start) is the
strategy's extended in `driver.py`; push records and staleness statistics
are in `stats.py`. This module holds the public class (validation,
construction, accessors) only.

Protocols:

- `"async"`: Downpour / A-PSGD. Every push is applied on arrival.
- `"softsync"`: Rudra's n-softsync. The ps averages every `softsync_n`
  pushes (from any workers) and applies the average. `softsync_n` is the
  paper's `c = lambda / n` (pushes per update), not its `n`: with
  `lambda` workers, Rudra's n-softsync is `softsync_n = lambda // n`, and
  its mean staleness is about `lambda / softsync_n` (1-softsync averages
  `lambda` pushes, `lambda`-softsync applies each push).
- `"sync"`: S-PSGD. Each worker computes one push from the same parameters;
  the ps applies their average once all have arrived, then the next round
  starts. One update consumes `num_workers * n_push` batches.

Round trips per worker step, measured (bench/results/speed_s8/, one worker,
20 ms one way on one host at a time; step time over the 40 ms round trip):
A-PSGD / Downpour with n_fetch = n_push = 1: 4.4 involve the chief, 8.9 the
worker, 7.0 the ps; S-PSGD: 6.8, 15.2 and 16.5. With 8 workers at 20 ms
everywhere, on a step's critical path (the README's "Round trips per step",
generated from bench/results/fair_s11/latency: the step's growth from an
unshaped network to 20 ms one way, over 40 ms): 13.0 for A-PSGD, 28.4 for
S-PSGD, 3.7 with n_fetch = n_push = 4 (14.8 per 4-step closure). Of a
closure's, about 4 are TF's dispatch (`ClusterCoordinator` makes three
synchronous calls to the worker before the closure starts, and copies its
result back), which `steps_per_execution` amortizes; the chief's own
bookkeeping costs one drain per half of its in-flight limit; a push costs
no wait for its apply unless a fetch in the same closure follows (or with
`"sync"`). Session 7 measured 95-104 (A-PSGD) and 82-88 (S-PSGD) round
trips per step with 4 workers (bench/results/downpour_round_trips_s7/).

References:
    Dean, Corrado, Monga, Chen, Devin, Le, Mao, Ranzato, Senior, Tucker,
    Yang, Ng. "Large Scale Distributed Deep Networks." NIPS 2012.

    Gupta, Zhang, Wang. "Model Accuracy and Runtime Tradeoff in Distributed
    Deep Learning: A Systematic Study." ICDM 2016.
"""

import dataclasses

import tensorflow as tf

from tf_decentral import _tf_private
from tf_decentral.cluster import lifecycle
from tf_decentral.cluster import tf_config
from tf_decentral.strategies import _keras_hooks
from tf_decentral.strategies.downpour import config as config_lib
from tf_decentral.strategies.downpour import driver as driver_lib
from tf_decentral.strategies.downpour import ps as ps_lib

PROTOCOLS = ps_lib.PROTOCOLS

_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222", '
    '"host2:2222"], "ps": ["host3:2222"]}, "task": {"type": "chief", '
    '"index": 0}}'
)


@dataclasses.dataclass(frozen=True)
class DownpourOptions:
    """Tuning knobs of `DownpourParameterServerStrategy`.

    Attributes:
        max_shard_bytes: A variable larger than this many bytes is split
            along its first axis into row shards of at most this size (at
            most one per ps task); None never splits. At least 1.
        max_inflight_per_worker: Closures per worker whose pushes may be
            scheduled but not yet applied before a call of the train
            function waits (for any of them, not the oldest, until half of
            them are applied); at least 1. More hides the chief's
            latency: measured with 8 workers at 20 ms one way
            (`bench/results/speed_s10/`), 8 instead of 2 cut the async
            step from 625 to 492 ms with the same mean staleness (3.1-3.8
            pushes); it can raise staleness when the ps applies pushes
            slower than the workers send them.

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


def _config_property(name, doc):
    return property(lambda self: getattr(self.extended.config, name), doc=doc)


class DownpourParameterServerStrategy(_tf_private.ParameterServerStrategyBase):
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
      A dataset of unknown size (after `filter`, `flat_map`, ...) is also
      read on the chief, a batch per step, to find the epoch's end, so its
      pipeline runs there too; an endless one can say so with
      `tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY)`.
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
    - The learning rate: `"async"` applies every push on its own, so `n`
      workers move the model about `n` times per round of steps, each time
      by a gradient computed on parameters several updates old. A plain
      SGD rate that suits synchronous training can diverge: measured with
      8 workers on Fashion-MNIST at 100 Mbit/s + 20 ms, SGD at 0.05
      (fine for `"sync"` and for all-reduce) diverged in every seed
      (`bench/results/fair_s11/tta`), and Adagrad at the same rate
      reached 84 % (`dean`). Use Adagrad, as Dean et al. did,
      `staleness_lr=True` (Gupta et al.), or a smaller rate.

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
            pushes the ps averages per update, in `[1, num_workers]`
            (Rudra's `c`; the paper's n-softsync is `num_workers // n`).
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
            tf_config.from_env()  # a ValueError saying what is wrong
            cluster_resolver = (
                tf.distribute.cluster_resolver.TFConfigClusterResolver()
            )
        num_workers = _check_cluster(cluster_resolver)
        if protocol == "softsync" and softsync_n > num_workers:
            raise ValueError(
                "`softsync_n` must be at most the number of workers "
                f"({num_workers}). Received: softsync_n={softsync_n}"
            )
        config = config_lib.RunConfig(
            n_fetch=n_fetch,
            n_push=n_push,
            protocol=protocol,
            softsync_n=softsync_n,
            staleness_lr=staleness_lr,
            warm_start_steps=warm_start_steps,
            options=options,
            num_workers=num_workers,
        )
        super().__init__(
            cluster_resolver,
            lambda strategy, resolver: driver_lib.DownpourExtended(
                strategy, resolver, config
            ),
        )
        # One per strategy (TF's `ClusterCoordinator` is a singleton per
        # strategy); the extended schedules the closures on it.
        self.extended.coordinator = (
            tf.distribute.experimental.coordinator.ClusterCoordinator(self)
        )
        _keras_hooks.install()
        # The serving tasks (`tfd.cluster.run_server`) exit when this
        # program does, with its outcome (tf_decentral.cluster.lifecycle).
        lifecycle.start_chief_lifecycle(
            cluster_resolver.cluster_spec().as_dict()
        )

    # -- public -------------------------------------------------------------

    n_fetch = _config_property("n_fetch", "Steps between two fetches.")
    n_push = _config_property("n_push", "Steps between two pushes.")
    protocol = _config_property(
        "protocol", '`"async"`, `"softsync"` or `"sync"`.'
    )
    softsync_n = _config_property(
        "softsync_n", 'Pushes per update with `"softsync"`, else None.'
    )
    staleness_lr = _config_property(
        "staleness_lr", "Whether updates divide the rate by the staleness."
    )
    warm_start_steps = _config_property(
        "warm_start_steps", "Steps run one closure at a time at the start."
    )
    options = _config_property("options", "The `DownpourOptions`.")
    steps_per_closure = _config_property(
        "steps_per_closure",
        "Steps of one closure: `lcm(n_fetch, n_push)`; a model compiled "
        "with `steps_per_execution=k` runs the smallest multiple of it that "
        "is at least `k` (not under `'sync'`).",
    )
    max_inflight = _config_property(
        "max_inflight",
        "Closures scheduled but not finished before the chief waits.",
    )

    @property
    def coordinator(self):
        """The `ClusterCoordinator` the closures are scheduled on."""
        return self.extended.coordinator

    @property
    def num_workers(self) -> int:
        """The number of worker tasks."""
        return self.extended.num_workers

    @property
    def num_ps(self) -> int:
        """The number of parameter-server tasks."""
        return self.extended.num_ps

    def staleness_histogram(
        self, *, current_epoch: bool = False
    ) -> dict[int, int]:
        """Returns `{staleness: number of pushes}` over every accepted push.

        Staleness 1 means the gradient was computed on the parameters it
        updated; see `ps.py` for the definition.

        Args:
            current_epoch: Count only the pushes of `fit`'s current epoch
                (the one just ended, in a callback's `on_epoch_end`).
        """
        return self.extended.push_stats.histogram(current_epoch)

    def push_records(self) -> list:
        """Returns a `PushRecord` per push, oldest first (the newest 100k)."""
        return self.extended.push_stats.records()

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
        return self.extended.ps_stats()

    def experimental_distribute_dataset(self, dataset, options=None):
        """Returns `dataset` for Keras on the chief.

        `fit` ships the dataset to the workers itself; `evaluate` and
        `predict` read it on the chief.
        """
        del options
        return driver_lib.ChiefDataset(dataset)

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
