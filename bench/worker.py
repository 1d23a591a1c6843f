r"""One task of a benchmark run: trains with a scheme, times every step.

`bench/run.py` starts one per task, inside the task's emulated host, with
`TF_CONFIG` pointing at the hosts' addresses; it can also run by hand under
`python -m tf_decentral.launch`:

    python -m tf_decentral.launch --workers 4 -- python bench/worker.py \
        --strategy=gossip --topology=ring --steps=30 --result_file=/tmp/r.json

Every training task writes one JSON file (`--result_file`, with the task
name inserted) holding:

- `step_end_times`: `time.time()` at the end of every train step (Keras
  `on_train_batch_end`), the evaluation pauses removed from `train_clock`;
- `tx_bytes` / `rx_bytes`: this host's `eth0` counters over the timed steps
  (inside a netsim namespace `eth0` is the host's access link);
- `calibration`: this worker's compute time per step, measured before the
  run with a twin of the model trained alone (no strategy, no network), with
  the same slept compute: the `c` of `tf_decentral.cost_model`;
- `evals`: test accuracy of this worker's own model every `--eval_every`
  steps (a twin model on the local CPU, no collective), and at the end.

Schemes: `--strategy=allreduce` (`tfd.AllReduceStrategy`, ring all-reduce
SGD), `gossip` (`tfd.GossipStrategy`, D-PSGD on `--topology`),
`async_gossip` (`tfd.AsyncGossipStrategy`, AD-PSGD) and `downpour`
(`tfd.DownpourParameterServerStrategy`; S-PSGD with `--ps_protocol=sync`).
The last two are hooks for strategies that have not landed yet: they fail
with "not available yet" until `tf_decentral` exports them.
"""

import collections
import json
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stragglers as stragglers_lib  # noqa: E402  (bench/stragglers.py)

STRATEGIES = ("allreduce", "gossip", "async_gossip", "downpour")
_STRATEGY = flags.DEFINE_enum("strategy", "allreduce", STRATEGIES, "Scheme.")
_ACTIVE_PASSIVE = flags.DEFINE_enum(
    "active_passive",
    "auto",
    ["auto", "true", "false"],
    "AsyncGossipStrategy's active_passive (auto: split bipartite graphs).",
)
_OVERLAP = flags.DEFINE_bool(
    "overlap",
    False,
    "AsyncGossipStrategy's overlap: an active worker's exchange runs while "
    "its next step trains.",
)
_ALLREDUCE_STEP = flags.DEFINE_enum(
    "allreduce_step",
    "fit",
    ["fit", "stock_fit", "custom_loop"],
    "allreduce: `fit` with AllReduceStrategy (one collective per step); "
    "stock_fit: `fit` with its step as stock MultiWorkerMirroredStrategy "
    "builds it (the gradients', the loss's and the accuracy's all-reduce: "
    "what MWMS would cost if its Keras 3 `fit` worked); custom_loop: a "
    "custom training loop with one all-reduce per step.",
)
_TOPOLOGY = flags.DEFINE_string(
    "topology", "ring", "Gossip topology (tf_decentral.topology name)."
)
_PS_PROTOCOL = flags.DEFINE_enum(
    "ps_protocol", "async", ["async", "sync", "softsync"], "Downpour only."
)
_SOFTSYNC_N = flags.DEFINE_integer(
    "softsync_n",
    None,
    "Downpour with --ps_protocol=softsync: pushes averaged per update.",
    lower_bound=1,
)
_STALENESS_LR = flags.DEFINE_bool(
    "staleness_lr",
    False,
    "Downpour only: divide each update's learning rate by its staleness.",
)
_N_FETCH = flags.DEFINE_integer("n_fetch", 1, "Downpour only.", lower_bound=1)
_N_PUSH = flags.DEFINE_integer("n_push", 1, "Downpour only.", lower_bound=1)
_MAX_INFLIGHT = flags.DEFINE_integer(
    "max_inflight_per_worker",
    None,
    "Downpour only: DownpourOptions.max_inflight_per_worker (None: the "
    "strategy's default).",
    lower_bound=1,
)
_SPE = flags.DEFINE_integer(
    "steps_per_execution",
    1,
    "Keras' steps_per_execution (Downpour: local steps per closure, "
    "rounded up to a multiple of lcm(n_fetch, n_push)).",
    lower_bound=1,
)
_HIDDEN = flags.DEFINE_list(
    "hidden",
    ["128"],
    "MLP hidden widths. 128: 0.10 M parameters (0.41 MB); 1280: 1.02 M "
    "(4.07 MB).",
)
_DATASET = flags.DEFINE_enum(
    "dataset",
    "fashion_mnist",
    ["fashion_mnist", "synthetic"],
    "fashion_mnist: Debian's dataset-fashion-mnist IDX files; "
    "synthetic: random images (timing only).",
)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Per worker.", lower_bound=1)
_LR = flags.DEFINE_float("learning_rate", 0.05, "Learning rate.")
_OPTIMIZER = flags.DEFINE_enum(
    "optimizer",
    "sgd",
    ["sgd", "adagrad"],
    "Keras optimizer (Downpour: the ps applies it, Dean et al. used Adagrad).",
)
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
_WARMUP = flags.DEFINE_integer(
    "warmup_steps", 5, "Untimed first steps (tracing).", lower_bound=1
)
_STEPS = flags.DEFINE_integer("steps", 40, "Timed steps.", lower_bound=1)
_COMPUTE_MS = flags.DEFINE_float(
    "compute_ms", 0.0, "Slept compute per step (straggler base)."
)
_BURN = flags.DEFINE_integer(
    "burn_iterations",
    0,
    "cpu_quota mode: matrix products burned per step inside the train step "
    "(bench/stragglers.burn_layer), logged to "
    f"${stragglers_lib.COMPUTE_LOG_ENV}; PS schemes burn in their input "
    "pipeline instead.",
    lower_bound=0,
)
_DELAY_MODE = flags.DEFINE_enum(
    "delay_mode",
    "graph",
    ["graph", "callback"],
    "graph: sleep inside the train step (py_function); callback: between "
    "steps.",
)
_STRAGGLERS = flags.DEFINE_string(
    "stragglers",
    None,
    "'INDEX:FACTOR,...' slept-compute multipliers (default: "
    f"${stragglers_lib.STRAGGLERS_ENV}).",
)
_EVAL_EVERY = flags.DEFINE_integer(
    "eval_every", 0, "Evaluate every this many steps (0: at the end only)."
)
_EVAL_EXAMPLES = flags.DEFINE_integer(
    "eval_examples", 2000, "Test examples per evaluation (0: all 10000)."
)
_CALIBRATE = flags.DEFINE_integer(
    "calibrate_steps", 15, "Steps of the twin model timing c (0: skip)."
)
_RESULT = flags.DEFINE_string("result_file", None, "JSON result path.")
_BARRIER_DIR = flags.DEFINE_string(
    "barrier_dir",
    None,
    "If set: wait for every training task's done file here before exit "
    "(async schemes: keep serving until all finish).",
)
_BARRIER_COUNT = flags.DEFINE_integer(
    "barrier_count",
    None,
    "Tasks that write a done file (default: every training worker).",
)
_TIMEOUT = flags.DEFINE_float("collective_timeout", 180.0, "Seconds.")
_INTRA = flags.DEFINE_integer("intra_op", 1, "TF intra-op threads.")
_INTER = flags.DEFINE_integer("inter_op", 2, "TF inter-op threads.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_FINAL_AVERAGE = flags.DEFINE_bool(
    "final_average",
    True,
    "Gossip: after training, also evaluate the exact average of the "
    "workers' models (a collective).",
)


def load_data():
    """Returns `(x_train, y_train, x_test, y_test)` as float32 / int32."""
    import numpy as np

    if _DATASET.value == "synthetic":
        rng = np.random.default_rng(0)
        x = rng.random((4096, 28, 28), np.float32)
        y = rng.integers(0, 10, 4096).astype(np.int32)
        return x, y, x[:1000], y[:1000]
    from tf_decentral import datasets

    x_train, y_train, x_test, y_test = datasets.fashion_mnist_arrays()
    x_train, x_test = x_train[..., 0], x_test[..., 0]
    return (
        x_train.astype(np.float32) / 255.0,
        y_train.astype(np.int32),
        x_test.astype(np.float32) / 255.0,
        y_test.astype(np.int32),
    )


def fashion_mnist_train_from_files(seed):
    """Returns Fashion-MNIST's training split as the dataset
    `local_dataset(0, 1)` gives, read from the IDX files where it runs.

    For parameter-server schemes: the chief serializes the pipeline and
    every worker's TF server runs it, so `from_tensor_slices` of the
    in-memory arrays would send the 188 MB of float32 images to each worker
    (measured at 100 Mbit/s: the eight copies held up the chief's
    heartbeats past their 30 s grace and the workers stopped). Reading the
    files inside the pipeline, as TF's guide recommends for
    `ParameterServerStrategy`, sends a graph of a few kB; the elements and
    their order (one shuffle of the whole split) are the same.
    """
    import tensorflow as tf

    from tf_decentral.datasets import _fashion_mnist

    paths = list(_fashion_mnist.source_files().values())

    def idx(path, header_bytes):
        raw = tf.io.decode_compressed(tf.io.read_file(path), "GZIP")
        body = tf.strings.substr(raw, header_bytes, 1 << 30)
        return tf.io.decode_raw(body, tf.uint8)

    def split(_):
        images = tf.reshape(idx(paths[0], 16), (-1, 28, 28))
        labels = tf.cast(idx(paths[1], 8), tf.int32)
        images = tf.cast(images, tf.float32) / 255.0
        return tf.data.Dataset.from_tensor_slices((images, labels))

    examples = tf.data.Dataset.from_tensors(0).flat_map(split)
    return examples.shuffle(60000, seed=seed)


def build_model(compute_s):
    import keras

    layers = [keras.Input((28, 28))]
    in_graph = _DELAY_MODE.value == "graph" and _STRATEGY.value != "downpour"
    if in_graph and compute_s > 0:
        layers.append(stragglers_lib.delay_layer(compute_s))
    if _BURN.value and _STRATEGY.value != "downpour":
        log_dir = os.environ.get(stragglers_lib.COMPUTE_LOG_ENV, "")
        layers.append(stragglers_lib.burn_layer(_BURN.value, log_dir))
    layers.append(keras.layers.Flatten())
    for width in _HIDDEN.value:
        layers.append(keras.layers.Dense(int(width), activation="relu"))
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers, name="mlp")


def compile_model(model, steps_per_execution=1):
    import keras

    if _OPTIMIZER.value == "adagrad":
        optimizer = keras.optimizers.Adagrad(_LR.value)
    else:
        optimizer = keras.optimizers.SGD(
            _LR.value, momentum=_MOMENTUM.value or 0.0
        )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )


def make_strategy():
    """Returns the strategy `--strategy` names, built from the flags."""
    import tensorflow as tf

    import tf_decentral as tfd

    name = _STRATEGY.value
    if name == "downpour":
        options = dict(
            n_fetch=_N_FETCH.value,
            n_push=_N_PUSH.value,
            protocol=_PS_PROTOCOL.value,
            softsync_n=_SOFTSYNC_N.value,
            staleness_lr=_STALENESS_LR.value,
        )
        if _MAX_INFLIGHT.value is not None:
            from tf_decentral.strategies import downpour

            options["options"] = downpour.DownpourOptions(
                max_inflight_per_worker=_MAX_INFLIGHT.value
            )
    else:
        options = dict(
            communication_options=(
                tf.distribute.experimental.CommunicationOptions(
                    implementation=(
                        tf.distribute.experimental.CommunicationImplementation.RING
                    ),
                    timeout_seconds=_TIMEOUT.value,
                )
            )
        )
    if name == "gossip":
        options.update(topology=_TOPOLOGY.value, update="dpsgd")
    elif name == "async_gossip":
        options.update(
            topology=_TOPOLOGY.value,
            active_passive={"auto": None, "true": True, "false": False}[
                _ACTIVE_PASSIVE.value
            ],
            seed=_SEED.value,
            overlap=_OVERLAP.value,
        )
    if name == "allreduce" and _ALLREDUCE_STEP.value == "stock_fit":
        return _stock_step_allreduce(**options)
    return tfd.strategies.get(name, **options)


def _stock_step_allreduce(**options):
    """AllReduceStrategy with the step stock MWMS builds under `fit`."""
    import tf_decentral as tfd

    class StockStepAllReduce(tfd.AllReduceStrategy):
        """AllReduceStrategy whose `reduce` is MWMS's (with our Keras 3
        fix): Keras' step all-reduces every logged scalar on its own."""

        def reduce(self, reduce_op, value, axis):
            return super(tfd.AllReduceStrategy, self).reduce(
                reduce_op, value, axis
            )

    return StockStepAllReduce(**options)


def train_custom_loop(strategy, model, data, steps, on_step_end):
    """`steps` steps of a custom training loop with one all-reduce each:
    the optimizer's batched gradient all-reduce; the loss stays local."""
    import tensorflow as tf

    iterator = iter(data)
    loss_fn = model.loss

    def step_fn(batch):
        x, y = batch
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(loss_fn(y, logits))
            scaled = loss / strategy.num_replicas_in_sync
        grads = tape.gradient(scaled, model.trainable_variables)
        model.optimizer.apply(grads, model.trainable_variables)
        return loss

    @tf.function
    def train_step():
        return strategy.run(step_fn, args=(next(iterator),))

    for step in range(steps):
        loss = train_step()
        strategy.experimental_local_results(loss)[0].numpy()
        on_step_end(step)


def _read_counter(name):
    try:
        with open(f"/sys/class/net/eth0/statistics/{name}") as f:
            return int(f.read())
    except OSError:
        return None


def _loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


class _Timer:
    """Step end times, evaluation pauses, byte counters (a Keras callback)."""

    def __init__(self, warmup, eval_every, evaluate, per_step=1, drain=None):
        import keras

        timer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                timer.step_end(batch)

        self.callback = Callback()
        self.warmup = warmup
        self.per_step = per_step  # Keras steps per worker step
        # PS schemes: a Keras step returns once its closure is dispatched;
        # `drain()` waits for every dispatched one, so the timed steps
        # start with none of the warm-up's in flight.
        self.drain = drain
        self.eval_every = eval_every
        self.evaluate = evaluate
        self.step_end_times = []
        self.eval_seconds = 0.0
        self.eval_pauses = []  # (step, seconds): time excluded per eval
        self.evals = []
        self.counters_start = None
        self.counters_end = None
        self.timed_start = None

    def step_end(self, batch):
        # Keras calls back once per `steps_per_execution` steps, with the
        # last one's index: each of them ends now.
        now = time.time()
        for _ in range(max(1, batch + 1 - len(self.step_end_times))):
            self._one_step_end(now)

    def _one_step_end(self, now):
        self.step_end_times.append(now)
        done = len(self.step_end_times)
        if done == self.warmup:
            if self.drain is not None:
                self.drain()
                now = self.step_end_times[-1] = time.time()
            self.timed_start = now
            self.counters_start = (
                _read_counter("tx_bytes"),
                _read_counter("rx_bytes"),
            )
        if done > self.warmup:
            self.counters_end = (
                _read_counter("tx_bytes"),
                _read_counter("rx_bytes"),
            )
        timed = done - self.warmup
        if self.eval_every and timed >= 0 and timed % self.eval_every == 0:
            start = time.time()
            accuracy = self.evaluate()
            pause = time.time() - start
            self.evals.append(
                {
                    "step": timed // self.per_step,
                    "train_clock": now - self.timed_start - self.eval_seconds,
                    "wall": now,
                    "accuracy": accuracy,
                }
            )
            self.eval_seconds += pause
            self.eval_pauses.append((done, pause))
            # Counters: evaluation is local, no traffic to exclude.


def _barrier(directory, task, count, timeout=900.0):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"done.{task}"), "w") as f:
        f.write(str(time.time()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [e for e in os.listdir(directory) if e.startswith("done.")]
        if len(done) >= count:
            return True
        time.sleep(0.2)
    return False


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    started = time.time()
    load_start = _loadavg()
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(_INTRA.value)
    tf.config.threading.set_inter_op_parallelism_threads(_INTER.value)
    import keras

    from tf_decentral import cluster

    config = cluster.from_env()
    task = config.task_name.replace(":", "_") if config else "local"
    result_path = _RESULT.value
    if result_path:
        root, ext = os.path.splitext(result_path)
        result_path = f"{root}.{task}{ext or '.json'}"
    result = {
        "task": task,
        "strategy": _STRATEGY.value,
        "topology": _TOPOLOGY.value,
        "started": started,
        "loadavg_start": load_start,
        "tf_version": tf.__version__,
        "keras_version": keras.__version__,
    }

    def write():
        if result_path:
            with open(result_path + ".tmp", "w") as f:
                json.dump(result, f)
            os.replace(result_path + ".tmp", result_path)

    if (
        _STRATEGY.value == "downpour"
        and config
        and config.task_type
        in (
            "worker",
            "ps",
        )
    ):
        # Parameter-server and worker tasks of a PS scheme only serve.
        cluster.run_server(config)
        return 0

    strategy = make_strategy()

    # This worker's index among the training tasks (chief first).
    node = (
        config.worker_index
        if config and config.task_type in ("chief", "worker")
        else 0
    )
    num_nodes = (config.num_workers + int(config.has_chief)) if config else 1
    # Keras steps per worker step: a Downpour Keras step is one batch of
    # some worker, so every worker's step is `num_workers` Keras steps.
    keras_steps_per_step = 1
    if _STRATEGY.value == "downpour" and config is not None:
        num_nodes = config.num_workers  # the chief only drives
        keras_steps_per_step = config.num_workers
    stragglers = (
        stragglers_lib.Stragglers.parse(_STRAGGLERS.value)
        if _STRAGGLERS.value is not None
        else stragglers_lib.Stragglers.from_env()
    )
    compute_s = stragglers.compute_seconds(node, _COMPUTE_MS.value)
    result.update(
        node=node,
        num_nodes=num_nodes,
        keras_steps_per_step=keras_steps_per_step,
        compute_s_slept=compute_s,
        straggler_factor=stragglers.factor(node),
    )

    x_train, y_train, x_test, y_test = load_data()
    if _EVAL_EXAMPLES.value:
        x_test = x_test[: _EVAL_EXAMPLES.value]
        y_test = y_test[: _EVAL_EXAMPLES.value]
    batch = _BATCH.value
    total_steps = (_WARMUP.value + _STEPS.value) * keras_steps_per_step
    for name, steps in (("warmup_steps", _WARMUP), ("steps", _STEPS)):
        if steps.value * keras_steps_per_step % _SPE.value:
            raise app.UsageError(
                f"--{name} must be whole executions of "
                f"--steps_per_execution={_SPE.value} Keras steps (a PS "
                f"scheme's worker step is {keras_steps_per_step} of them): "
                "Keras times one callback per execution. Received: "
                f"--{name}={steps.value}"
            )

    def local_dataset(pipeline, pipelines, prefetch=True):
        xs, ys = x_train[pipeline::pipelines], y_train[pipeline::pipelines]
        ds = tf.data.Dataset.from_tensor_slices((xs, ys))
        ds = ds.shuffle(len(xs), seed=_SEED.value + pipeline)
        ds = ds.batch(batch, drop_remainder=True).repeat()
        return ds.prefetch(2) if prefetch else ds

    def dataset_fn(context):
        return local_dataset(
            context.input_pipeline_id, context.num_input_pipelines
        )

    keras.utils.set_random_seed(_SEED.value)
    # The twin: same architecture, no strategy; evaluates this worker's
    # model without any collective, and times the compute alone first.
    twin = build_model(compute_s)
    compile_model(twin)
    callbacks_extra = []
    if _DELAY_MODE.value == "callback" and compute_s > 0:
        callbacks_extra.append(stragglers_lib.step_delay_callback(compute_s))

    calibration = None
    if _CALIBRATE.value:
        twin_times = []

        class TwinTimer(keras.callbacks.Callback):
            def on_train_batch_end(self, b, logs=None):
                twin_times.append(time.perf_counter())

        twin_data = local_dataset(node, max(num_nodes, 1))
        if _STRATEGY.value == "downpour":
            # A worker's pipeline, slept as the runner set this process's
            # (the chief's: an ordinary worker's): the calibration measures
            # the slept compute the workers' steps get.
            twin_data = stragglers_lib.process_delayed_dataset(
                local_dataset(0, 1, prefetch=False)
            ).shard(max(num_nodes, 1), 0)
        twin.fit(
            twin_data,
            epochs=1,
            steps_per_epoch=3 + _CALIBRATE.value,
            callbacks=[TwinTimer(), *callbacks_extra],
            verbose=0,
        )
        durations = np.diff(twin_times[2:])
        calibration = {
            "median_s": float(np.median(durations)),
            "mean_s": float(np.mean(durations)),
            "steps": len(durations),
        }
        result["calibration"] = calibration

    def evaluate():
        twin.set_weights(model.get_weights())
        logits = twin.predict_on_batch(x_test)
        return float(np.mean(np.argmax(logits, -1) == y_test))

    with strategy.scope():
        model = build_model(compute_s)
        compile_model(model, _SPE.value)
    result["params"] = int(model.count_params())
    result["model_bytes"] = int(
        sum(int(np.prod(w.shape)) * 4 for w in model.trainable_weights)
    )
    ps_scheme = _STRATEGY.value == "downpour"
    if ps_scheme:
        # fit sends the pipeline to every worker; the slept compute runs in
        # it, on the worker, for as long as that worker's process says
        # (stragglers.process_delayed_dataset: the runner sets each worker
        # task's sleep per element, 1/n of its compute, since worker i of n
        # reads batches i, i + n, ... and its step waits for n elements).
        if _DATASET.value == "fashion_mnist":
            examples = fashion_mnist_train_from_files(_SEED.value)
            examples = examples.batch(batch, drop_remainder=True).repeat()
        else:
            examples = local_dataset(0, 1, prefetch=False)
        data = stragglers_lib.process_delayed_dataset(examples)
    else:
        data = strategy.distribute_datasets_from_function(dataset_fn)

    timer = _Timer(
        _WARMUP.value * keras_steps_per_step,
        _EVAL_EVERY.value * keras_steps_per_step,
        evaluate,
        keras_steps_per_step,
        drain=strategy.coordinator.join if ps_scheme else None,
    )
    result["initial_accuracy"] = evaluate()  # also traces the twin's predict
    custom_loop = (
        _STRATEGY.value == "allreduce"
        and _ALLREDUCE_STEP.value == "custom_loop"
    )
    fit_start = time.time()
    try:
        if custom_loop:
            train_custom_loop(
                strategy, model, data, total_steps, timer.step_end
            )
        else:
            model.fit(
                data,
                epochs=1,
                steps_per_epoch=total_steps,
                callbacks=[timer.callback, *callbacks_extra],
                verbose=0,
            )
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
        write()
        raise
    fit_end = time.time()
    if ps_scheme:
        # The chief's last Keras step ended when its closure was dispatched;
        # the timed steps end when `fit` has waited for every closure.
        timer.step_end_times[-1] = fit_end
    result.update(
        fit_start=fit_start,
        fit_end=fit_end,
        warmup_steps=_WARMUP.value * keras_steps_per_step,
        step_end_times=timer.step_end_times,
        timed_start=timer.timed_start,
        eval_pauses=timer.eval_pauses,
        eval_seconds=timer.eval_seconds,
        evals=timer.evals,
        loadavg_end=_loadavg(),
    )
    if _STRATEGY.value == "async_gossip":
        # Active and passive workers take two kinds of step: report apart.
        result["role"] = "active" if strategy.is_active else "passive"
        result["exchange_counts"] = {
            str(k): int(v) for k, v in strategy.exchange_counts.items()
        }
    if ps_scheme:
        # Which worker computed each applied step (a straggler's achieved
        # slowdown: the others' median count over its count).
        pushes = collections.Counter(
            r.worker for r in strategy.push_records() if r.fresh
        )
        result["pushes_by_worker"] = {str(k): v for k, v in pushes.items()}
        # What more closures in flight costs: staleness of applied pushes.
        result["staleness_histogram"] = {
            str(k): int(v) for k, v in strategy.staleness_histogram().items()
        }
    if timer.counters_start and timer.counters_end:
        (tx0, rx0), (tx1, rx1) = timer.counters_start, timer.counters_end
        if tx0 is not None and tx1 is not None:
            result["tx_bytes"] = tx1 - tx0
            result["rx_bytes"] = rx1 - rx0
    result["final_accuracy"] = evaluate()
    write()
    if _STRATEGY.value == "gossip" and _FINAL_AVERAGE.value:
        result["consensus_distance"] = float(strategy.consensus_distance(model))
        strategy.average_weights(model)
        result["averaged_accuracy"] = evaluate()
    elif _STRATEGY.value == "async_gossip" and _FINAL_AVERAGE.value:
        if _BARRIER_DIR.value:  # everyone done training before averaging
            _barrier(os.path.join(_BARRIER_DIR.value, "avg"), task, num_nodes)
        strategy.average_weights(model)
        result["averaged_accuracy"] = evaluate()
    result["finished"] = time.time()
    write()
    print("RESULT " + json.dumps({k: result[k] for k in (
        "task", "final_accuracy")}), flush=True)  # fmt: skip
    if _BARRIER_DIR.value:
        result["barrier_ok"] = _barrier(
            _BARRIER_DIR.value, task, _BARRIER_COUNT.value or num_nodes
        )
        write()
    sys.stdout.flush()
    sys.stderr.flush()
    # TF servers cannot shut down cleanly while peers may still talk to them.
    os._exit(0)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
