"""The chief of the DownpourParameterServerStrategy tests.

Usage:
    downpour_worker.py SCENARIO inproc NUM_WORKERS NUM_PS
        Starts NUM_WORKERS worker and NUM_PS ps servers inside this process
        (an in-process cluster), then runs SCENARIO as their chief.
    downpour_worker.py SCENARIO
        The chief of the cluster in TF_CONFIG, whose worker and ps tasks run
        `python -m tf_decentral.cluster.server`.

Prints progress lines and one final line `RESULT {json}`.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import push_gate  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_decentral as tfd  # noqa: E402
from tf_decentral.strategies import _keras_hooks  # noqa: E402
from tf_decentral.strategies import downpour  # noqa: E402

DIM = 6
BATCH = 8
LR = 0.1


def data(num_batches, seed=0):
    """A linear regression problem of `num_batches` batches of `BATCH`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_batches * BATCH, DIM))
    y = x @ rng.normal(size=(DIM, 1)) + 0.5
    return x.astype("float32"), y.astype("float32")


def worker_batches(x, y, worker, num_workers):
    """Worker `worker`'s batches, in the order it reads them."""
    xb = x.reshape(-1, BATCH, DIM)[worker::num_workers]
    yb = y.reshape(-1, BATCH, 1)[worker::num_workers]
    return list(zip(xb, yb))


def linear_model(strategy, make_optimizer, steps_per_execution=1):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(1)])
        model.compile(
            make_optimizer(), "mse", steps_per_execution=steps_per_execution
        )
    return model


def in_process_cluster(num_workers, num_ps):
    """Servers in this process; returns their cluster resolver."""
    spec = {
        "worker": [
            f"localhost:{p}" for p in tfd.testing.pick_ports(num_workers)
        ],
        "ps": [f"localhost:{p}" for p in tfd.testing.pick_ports(num_ps)],
    }
    cluster_spec = tf.train.ClusterSpec(spec)
    # In one process every server's remote calls wait on each other: give
    # them threads enough not to starve.
    config = tf.compat.v1.ConfigProto()
    config.inter_op_parallelism_threads = 4 * (num_workers + num_ps)
    for job, addresses in spec.items():
        for index in range(len(addresses)):
            tf.distribute.Server(
                cluster_spec,
                job_name=job,
                task_index=index,
                protocol="grpc",
                config=config,
            )
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        cluster_spec, rpc_layer="grpc"
    )


def placement(model):
    """`{path: [devices]}` of every model and optimizer variable."""
    result = {}
    for variable in model.weights:
        value = variable.value
        if isinstance(value, downpour.RowShardedVariable):
            result[variable.path] = [v.device for v in value.variables]
        else:
            result[variable.path] = [value.device]
    for variable in model.optimizer.variables:
        result[f"optimizer:{variable.path}"] = [variable.value.device]
    return result


def records(strategy):
    return [list(r) for r in strategy.push_records()]


# -- scenarios ----------------------------------------------------------------


def async_invariants(resolver, tmp):
    """Async Downpour with warm start, row shards, save/load, bad input."""
    strategy = tfd.DownpourParameterServerStrategy(
        resolver,
        n_fetch=2,
        n_push=1,
        warm_start_steps=6,
        options=downpour.DownpourOptions(max_shard_bytes=1024),
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64 * BATCH, 20)).astype("float32")
    y = (x @ rng.normal(size=(20, 1)) > 0).astype("float32")
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((20,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.BatchNormalization(),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        model.compile(
            keras.optimizers.Adagrad(0.1),
            "binary_crossentropy",
            metrics=["accuracy"],
        )
    log_dir = os.path.join(tmp, "logs")
    callbacks = [
        keras.callbacks.TensorBoard(log_dir),
        downpour.StalenessHistogram(log_dir),
        keras.callbacks.ModelCheckpoint(os.path.join(tmp, "best.keras")),
    ]
    history = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=2,
        verbose=0,
        validation_data=(x[:64], y[:64]),
        callbacks=callbacks,
    )
    result = {
        "stats": strategy.ps_stats(),
        "histogram": strategy.staleness_histogram(),
        "records": records(strategy),
        "history": {
            k: [float(v) for v in vs] for k, vs in history.history.items()
        },
        "placement": placement(model),
        "evaluate": model.evaluate(x, y, verbose=0, return_dict=True),
    }
    predictions = model.predict(x[:16], verbose=0)
    path = os.path.join(tmp, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    result["reload_max_diff"] = float(
        np.abs(loaded.predict(x[:16], verbose=0) - predictions).max()
    )
    result["weights_equal"] = all(
        np.array_equal(a, b)
        for a, b in zip(loaded.get_weights(), model.get_weights())
    )
    result["summaries"] = summaries(log_dir)
    result["checkpoint"] = os.path.exists(os.path.join(tmp, "best.keras"))
    # A second fit, on a dataset of unknown size (the chief reads along to
    # find the epoch's end).
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .filter(lambda *_: True)
        .batch(BATCH)
    )
    model.fit(dataset, epochs=1, verbose=0)
    result["stats_after_second_fit"] = strategy.ps_stats()
    result["errors"] = bad_input(strategy, model, x, y)
    result["hook_counts"] = dict(_keras_hooks.hook_counts)
    return result


def summaries(log_dir):
    """`{tag: number of events}` of the TensorBoard files under `log_dir`."""
    tags = {}
    for root, _, files in os.walk(log_dir):
        for name in files:
            path = os.path.join(root, name)
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    tags[value.tag] = tags.get(value.tag, 0) + 1
    return tags


def bad_input(strategy, model, x, y):
    """The errors a user gets for what the strategy cannot run."""
    errors = {}
    try:
        model.train_on_batch(x[:BATCH], y[:BATCH])
    except ValueError as e:
        errors["train_on_batch"] = str(e)

    class Custom(keras.Sequential):
        def train_step(self, data):
            return super().train_step(data)

    with strategy.scope():
        custom = Custom([keras.Input((20,)), keras.layers.Dense(1)])
        custom.compile("sgd", "mse")
    try:
        custom.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    except ValueError as e:
        errors["train_step"] = str(e)
    outside = keras.optimizers.SGD(0.1)
    with strategy.scope():
        model2 = keras.Sequential([keras.Input((20,)), keras.layers.Dense(1)])
        model2.compile(outside, "mse")
    try:
        model2.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    except ValueError as e:
        errors["optimizer_scope"] = str(e)
    try:
        strategy.distribute_datasets_from_function(
            lambda context: tf.data.Dataset.from_tensor_slices((x, y))
        )
    except NotImplementedError as e:
        errors["datasets_from_function"] = str(e)
    return errors


def softsync(resolver, tmp):
    """n-softsync with an odd number of pushes."""
    del tmp
    strategy = tfd.DownpourParameterServerStrategy(
        resolver, protocol="softsync", softsync_n=2
    )
    x, y = data(33)
    model = linear_model(strategy, lambda: keras.optimizers.SGD(LR))
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return {
        "stats": strategy.ps_stats(),
        "histogram": strategy.staleness_histogram(),
        "records": records(strategy),
    }


def steps_per_execution(resolver, tmp):
    """Async, n_fetch = n_push = 1, compiled with steps_per_execution=4, on
    a dataset of 33 batches: closures of 4 steps, and the epoch's last
    execution runs the one batch left."""
    del tmp
    strategy = tfd.DownpourParameterServerStrategy(resolver)
    x, y = data(33)
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(LR), "mse", steps_per_execution=4)
    # A dataset of known size (33 batches): Keras' ninth call runs 1.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    model.fit(dataset, epochs=2, verbose=0)
    return {"stats": strategy.ps_stats(), "records": records(strategy)}


def sync(resolver, tmp):
    """S-PSGD on a row-sharded linear model, for the NumPy reference."""
    del tmp
    strategy = tfd.DownpourParameterServerStrategy(
        resolver,
        protocol="sync",
        options=downpour.DownpourOptions(max_shard_bytes=8),
    )
    x, y = data(16)
    model = linear_model(strategy, lambda: keras.optimizers.SGD(LR))
    initial = [w.tolist() for w in model.get_weights()]
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return {
        "initial": initial,
        "weights": [w.tolist() for w in model.get_weights()],
        "stats": strategy.ps_stats(),
        "records": records(strategy),
        "placement": placement(model),
    }


def exact(resolver, tmp):
    """One worker, n_fetch=2, staleness_lr, momentum: a NumPy reference.

    The whole epoch is a warm start: each closure starts once the previous
    one's pushes are applied, so its first fetch sees them (otherwise its
    last push is applied while the next closure runs, and the next fetch
    may or may not see it).
    """
    del tmp
    strategy = tfd.DownpourParameterServerStrategy(
        resolver,
        n_fetch=2,
        n_push=1,
        warm_start_steps=10,
        staleness_lr=True,
        options=downpour.DownpourOptions(max_shard_bytes=8),
    )
    x, y = data(10)
    model = linear_model(
        strategy, lambda: keras.optimizers.SGD(LR, momentum=0.5)
    )
    initial = [w.tolist() for w in model.get_weights()]
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    result = {
        "initial": initial,
        "weights": [w.tolist() for w in model.get_weights()],
        "stats": strategy.ps_stats(),
        "histogram": strategy.staleness_histogram(),
        "placement": placement(model),
    }
    # Re-run closure 5 (the last one, whose pushes were applied), as the
    # coordinator re-runs a closure whose worker died after pushing: both
    # pushes are dropped as duplicates, nothing changes.
    train_function = model.train_function
    applier = train_function.state.applier
    metrics = [v.numpy().tolist() for v in model.metrics_variables]
    strategy.coordinator.schedule(
        train_function.builder.function(2),
        args=(train_function.iterator, tf.constant(5, tf.int64)),
    )
    applier.start()  # fit stopped it
    strategy.coordinator.join()
    # The closure's last push need not be applied when it ends: stopping
    # the applier applies every push sent. (fit drained its own records.)
    applier.stop()
    records = applier.drain()
    result["rerun"] = {
        "push_ids": records["push_id"].tolist(),
        "fresh": records["fresh"].tolist(),
        "metrics_unchanged": metrics
        == [v.numpy().tolist() for v in model.metrics_variables],
        "stats": strategy.ps_stats(),
        "weights": [w.tolist() for w in model.get_weights()],
    }
    return result


def mnist(resolver, tmp):
    """Accuracy on 4000 real MNIST digits."""
    del tmp
    train = tfd.datasets.load("mnist_5k", split="train")
    test = tfd.datasets.load("mnist_5k", split="test")

    def arrays(ds):
        images, labels = next(iter(ds.batch(10_000)))
        images = images.numpy().reshape(len(images), -1) / 255.0
        return images.astype("float32"), labels.numpy()

    x, y = arrays(train)
    x_test, y_test = arrays(test)
    strategy = tfd.DownpourParameterServerStrategy(resolver, n_push=2)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((784,)),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
        model.compile(
            keras.optimizers.Adagrad(0.05),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    start = time.monotonic()
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    seconds = time.monotonic() - start
    return {
        "test": model.evaluate(x_test, y_test, verbose=0, return_dict=True),
        "history": {
            k: [float(v) for v in vs] for k, vs in history.history.items()
        },
        "fit_seconds": seconds,
        "steps": 3 * int(np.ceil(len(x) / 32)),
        "stats": strategy.ps_stats(),
        "histogram": strategy.staleness_histogram(),
    }


class _Progress(keras.callbacks.Callback):
    """Prints a line per epoch: `EPOCH e iterations checksum workers`."""

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy
        self.seen = 0
        self.deadline = None

    def on_train_begin(self, logs=None):
        print(
            "BEGIN "
            + json.dumps(
                {
                    "iterations": int(self.model.optimizer.iterations),
                    "checksum": checksum(self.model),
                }
            ),
            flush=True,
        )

    def on_epoch_end(self, epoch, logs=None):
        new = self.strategy.push_records()[self.seen :]
        self.seen += len(new)
        print(
            "EPOCH "
            + json.dumps(
                {
                    "epoch": epoch,
                    "iterations": int(self.model.optimizer.iterations),
                    "checksum": checksum(self.model),
                    "workers": sorted({r.worker for r in new}),
                    "time": time.time(),
                }
            ),
            flush=True,
        )
        # The test ends training by creating this file (or by a deadline).
        stop_file = os.environ.get("DOWNPOUR_TEST_STOP_FILE")
        if stop_file and os.path.exists(stop_file):
            self.model.stop_training = True
        stop_after = float(os.environ.get("DOWNPOUR_TEST_SECONDS", "0"))
        if self.deadline is None:
            self.deadline = time.monotonic() + stop_after
        if stop_after and time.monotonic() > self.deadline:
            self.model.stop_training = True


class _ArmGate(keras.callbacks.Callback):
    """Arms the push gate at the end of the first epoch."""

    def __init__(self, gate):
        super().__init__()
        self.gate = gate

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.gate.arm()


def checksum(model):
    return float(sum(np.abs(w).sum() for w in model.get_weights()))


def faults(resolver, tmp):
    """Long async training: the test kills a worker or a ps meanwhile."""
    del tmp
    protocol = os.environ.get("DOWNPOUR_TEST_PROTOCOL", "async")
    # The test kills worker 1 while one of its pushes is held between its
    # claim and its apply (`push_gate`), then creates this file. Closures
    # of 2 steps (steps_per_execution=2, n_fetch=1): the held push is a
    # closure's first, which its worker waits for (it fetches again after
    # it), so the kill cuts the closure and the coordinator re-runs it.
    release_file = os.environ.get("DOWNPOUR_TEST_GATE_RELEASE")
    strategy = tfd.DownpourParameterServerStrategy(
        resolver,
        protocol=protocol,
        softsync_n=2 if protocol == "softsync" else None,
    )
    gate = push_gate.install(release_file, every=2) if release_file else None
    x, y = data(32)
    model = linear_model(
        strategy,
        lambda: keras.optimizers.SGD(0.01),
        steps_per_execution=2 if release_file else 1,
    )
    callbacks = [_Progress(strategy)]
    if gate is not None:
        callbacks.append(_ArmGate(gate))
    backup = os.environ.get("DOWNPOUR_TEST_BACKUP")
    if backup:
        callbacks.insert(0, keras.callbacks.BackupAndRestore(backup))
    epochs = int(os.environ.get("DOWNPOUR_TEST_EPOCHS", "1000"))
    try:
        history = model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=epochs,
            callbacks=callbacks,
            verbose=0,
        )
    except Exception as e:  # noqa: BLE001 - reported to the test
        return {
            "error_type": type(e).__name__,
            "error": str(e)[:3000],
            "error_time": time.time(),
        }
    return {
        "epochs": len(history.history["loss"]),
        "steps_per_epoch": 32,
        "stats": strategy.ps_stats(),
        "records": records(strategy),
        "loss": history.history["loss"][-1],
    }


SCENARIOS = {
    f.__name__: f
    for f in (
        async_invariants,
        softsync,
        steps_per_execution,
        sync,
        exact,
        mnist,
        faults,
    )
}


def main(argv):
    if os.environ.get("DOWNPOUR_TEST_VERBOSE"):
        tf.get_logger().setLevel("INFO")
    scenario = SCENARIOS[argv[1]]
    if len(argv) > 2 and argv[2] == "inproc":
        resolver = in_process_cluster(int(argv[3]), int(argv[4]))
    else:
        resolver = None
    tmp = os.environ.get("DOWNPOUR_TEST_TMP", "/tmp")
    result = scenario(resolver, tmp)
    print("RESULT " + json.dumps(result), flush=True)
    # TF's teardown of a connected cluster may block; the result is out.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
