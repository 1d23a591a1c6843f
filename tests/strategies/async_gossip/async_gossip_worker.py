"""One worker of the AsyncGossipStrategy tests (run with TF_CONFIG).

Usage: async_gossip_worker.py PHASE [OPTIONS_JSON]
Prints one line `RESULT {json}` when the phase succeeds.

Phases:
    fit: trains a small classifier on this worker's shard of the arrays in
        `OPTIONS["data"]` (an .npz with x_train, y_train, x_test, y_test),
        optionally sleeping `OPTIONS["sleep"][node]` seconds per step
        (a straggler) or dying at step `OPTIONS["die_at"]` (node `victim`).
    conserve: exchanges with the sum-conserving swap, locked or not (see
        `async_gossip_variants`), and reports the sum of all shared copies
        at the end (node 0); with `lockstep`, every worker starts one
        exchange per round and node 0 reports the sum after each round.
    finish: worker `early` trains, stops and pauses, then trains again,
        while the others train throughout.
    kill: trains; worker `victim` takes peer `held`'s lock lease and sits
        in a critical section on `held`'s server, then is SIGKILLed there.
    guard: checks that resources made by `shared_name` on one server are
        shared by every worker's client (TF behaviour the strategy needs).
    ordered: writes its shared copy, then at once exchanges solo, and
        counts the exchanges that read the copy from before the write.
    startup: creates the strategy, waits for all workers, then exits.
    rejoin: trains until told to stop; worker `victim` waits to be
        SIGKILLed mid-training, and its restarted process trains again.
    checkpoint: trains with BackupAndRestore and ModelCheckpoint in one
        folder shared by every worker; with `kill_epoch`, node 0 (the
        checkpoint writer) SIGKILLs itself in the middle of that epoch.
"""

import atexit
import faulthandler
import json
import os
import signal
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
faulthandler.enable()  # A crash of TF prints the Python stacks.

# The worker runs as a script: its directory is on sys.path.
import async_gossip_variants as variants  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_decentral as tfd  # noqa: E402
from tf_decentral import _keras_private  # noqa: E402
from tf_decentral.strategies import _keras_hooks  # noqa: E402
from tf_decentral.strategies.async_gossip import exchange as exchange_lib  # noqa: E402


def report(result):
    print("RESULT " + json.dumps(result), flush=True)


def make_strategy(options):
    timeout = options.get("timeout", 30.0)
    return tfd.AsyncGossipStrategy(
        options.get("topology", "ring"),
        seed=options.get("seed", 0),
        active_passive=options.get("active_passive"),
        overlap=options.get("overlap", False),
        communication_options=tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=timeout
        ),
    )


def classifier(num_classes, input_dim, lr, batch_norm=False):
    layers = [keras.Input((input_dim,)), keras.layers.Dense(32)]
    if batch_norm:  # non-trainable weights: a second shared buffer
        layers.append(keras.layers.BatchNormalization())
    layers += [
        keras.layers.ReLU(),
        keras.layers.Dense(num_classes, activation="softmax"),
    ]
    model = keras.Sequential(layers)
    model.compile(
        keras.optimizers.SGD(lr, momentum=0.9),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def phase_fit(options):
    start = time.monotonic()
    strategy = make_strategy(options)
    node, n = strategy.node, strategy.num_workers
    started = time.monotonic() - start
    data = np.load(options["data"])
    x, y = data["x_train"], data["y_train"]
    x, y = x[node::n], y[node::n]  # this worker's shard
    keras.utils.set_random_seed(node)  # different initial models
    with strategy.scope():
        model = classifier(
            10,
            x.shape[1],
            options.get("lr", 0.05),
            batch_norm=options.get("batch_norm", False),
        )
    sleep = options.get("sleep", {}).get(str(node), 0.0)
    die_at = options.get("die_at")
    victim = options.get("victim")
    step_times = []

    class Pace(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step_times.append(time.time())  # one clock for all workers
            if node == victim and len(step_times) == die_at:
                os._exit(17)  # a crash: no cleanup, no goodbye
            if sleep:
                time.sleep(sleep)

    callbacks = [Pace()]
    if options.get("no_exit_wait"):  # To show what the wait prevents.
        atexit.unregister(strategy.extended.runtime.wait_for_peers_at_exit)
    monitor = options.get("monitor")
    if monitor:
        callbacks.append(tfd.callbacks.ConsensusMonitor(every_n_steps=monitor))
    fit_start = time.monotonic()
    history = model.fit(
        x,
        y,
        batch_size=options.get("batch", 32),
        epochs=options.get("epochs", 1),
        steps_per_epoch=options.get("steps_by_node", {}).get(
            str(node), options.get("steps")
        ),
        callbacks=callbacks,
        verbose=0,
        shuffle=True,
    )
    fit_seconds = time.monotonic() - fit_start
    result = {
        "node": node,
        "active": strategy.is_active,
        "startup_seconds": started,
        "fit_seconds": fit_seconds,
        "steps": len(step_times),
        "step_times": step_times,
        "history": {
            k: [float(v) for v in vs] for k, vs in history.history.items()
        },
        "exchanges": {str(k): v for k, v in strategy.exchange_counts.items()},
        "dropped": {str(k): v for k, v in strategy.dropped_peers.items()},
        "hook_counts": dict(strategy.extended.hook_counts),
    }
    if "x_test" in data:
        _, accuracy = model.evaluate(
            data["x_test"], data["y_test"], verbose=0, batch_size=256
        )
        result["accuracy"] = float(accuracy)
    if options.get("average"):
        result.update(average_and_evaluate(strategy, model, data))
    report(result)
    if options.get("linger"):
        time.sleep(options["linger"])


def average_and_evaluate(strategy, model, data):
    """Reports this worker's shared copy, then `average_weights`' result."""
    node, n = strategy.node, strategy.num_workers
    result = {"distance": strategy.consensus_distance(model)}
    # Once every worker has stopped training, the shared copies stay
    # put: report this worker's, to check the average against.
    extended = strategy.extended
    extended.locks.barrier(range(n), 120, "copies")
    shared = extended.shared_model(model)
    result["copy"] = [c.tolist() for c in shared.read_copy(node)]
    strategy.average_weights(model)
    result["averaged"] = [b.tolist() for b in shared.local_buffers()]
    result["averaged_copy"] = [c.tolist() for c in shared.read_copy(node)]
    if "x_test" in data:
        _, accuracy = model.evaluate(
            data["x_test"], data["y_test"], verbose=0, batch_size=256
        )
        result["averaged_accuracy"] = float(accuracy)
    return result


def phase_conserve(options):
    strategy = make_strategy(options)
    extended = strategy.extended
    node, n = strategy.node, strategy.num_workers
    size = options.get("size", 64)
    with tf.device(extended.client_device):
        variable = tf.Variable(tf.zeros([size]))
    if options["locked"]:
        locks = extended.locks
    else:
        # A long wait: the forced interleaving must not give up under load.
        locks = variants.UnlockedLocks(
            extended.layout, extended.timeout, wait_seconds=90.0
        )
    combine = variants.swap
    if options.get("delay"):
        combine = variants.slowed(combine, options["delay"])
    shared = exchange_lib.SharedModel(
        locks, extended.client_device, [variable], "conserve", combine=combine
    )
    shared.initialize(120)
    nodes = range(n)
    barrier = extended.locks.barrier
    warm = {}
    if options.get("lockstep"):
        # One exchange each before the rounds: every exchange function is
        # traced and placed, so a round's exchanges start together (a slow
        # first trace once let the unlocked variant's wait give up).
        extended.exchange(shared)
        barrier(nodes, 120, "warm")
        warm = dict(strategy.exchange_counts)
    start_value = np.full([size], 10.0 * node, np.float32)
    shared.write_own_copy([start_value])
    shared.set_local([start_value])
    barrier(nodes, 120, "start")

    def total():
        return np.stack([shared.read_copy(k)[0] for k in nodes]).sum(axis=0)

    round_sums = []
    round_copies = []  # every node's first value after each round
    begin = time.monotonic()
    for _ in range(options.get("exchanges", 50)):
        extended.exchange(shared)
        if options.get("lockstep"):
            barrier(nodes, 120, "exchanged")
            if node == 0:
                round_sums.append(total().tolist())
                round_copies.append(
                    [float(shared.read_copy(k)[0][0]) for k in nodes]
                )
            barrier(nodes, 120, "summed")
    seconds = time.monotonic() - begin
    barrier(nodes, 120, "end")
    result = {
        "node": node,
        "active": strategy.is_active,
        "seconds": seconds,
        "exchanges": {
            str(k): v - warm.get(k, 0)
            for k, v in strategy.exchange_counts.items()
        },
        "dropped": {str(k): v for k, v in strategy.dropped_peers.items()},
    }
    if node == 0:
        result["sums"] = total().tolist()
        result["round_sums"] = round_sums
        result["round_copies"] = round_copies
        result["expected"] = float(10.0 * sum(nodes))
    barrier(nodes, 120, "read")
    report(result)
    time.sleep(2)  # Peers may still be polling this worker's barrier.


def phase_exactly_once(options):
    """Every step adds `lr` to every weight (loss `-sum(x @ W)` on inputs
    of ones, plain SGD), so after `fit` the sum of all shared copies must
    be `n * W0 + lr * (total steps)`: each step's update applied exactly
    once, whatever the exchanges (sum-conserving) and their overlap with
    the next step did. Node 0 reports the sum and its `W0`."""
    strategy = make_strategy(options)
    node, n = strategy.node, strategy.num_workers
    steps, lr = options["steps"], options["lr"]
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(4, use_bias=False)]
        )
        model.compile(
            optimizer=keras.optimizers.SGD(lr),
            loss=lambda y_true, y_pred: -tf.reduce_sum(y_pred, axis=-1),
        )
    w0 = model.get_weights()[0]
    x = np.ones((steps * 8, 3), np.float32)
    sleep = options.get("sleep", {}).get(str(node), 0.0)

    class Pace(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(sleep)

    model.fit(x, x[:, :1], batch_size=8, verbose=0, callbacks=[Pace()])
    extended = strategy.extended
    shared = extended.trained_shared_model(model)
    barrier = extended.locks.barrier
    barrier(range(n), 120, "trained")
    result = {
        "node": node,
        "hook_counts": dict(extended.hook_counts),
        "exchanges": {str(k): v for k, v in strategy.exchange_counts.items()},
    }
    if node == 0:
        copies = [shared.read_copy(k)[0].astype(np.float64) for k in range(n)]
        result["sum"] = np.sum(copies, axis=0).tolist()
        result["w0"] = w0.astype(np.float64).ravel().tolist()
    barrier(range(n), 120, "read")
    report(result)


def phase_conserve_kill(options):
    """Exchanges (the swap step) while worker `victim` is SIGKILLed at a
    random point of an exchange after its first `warm` ones; the survivors
    exchange until it is gone, then `exchanges` more, and node 0 reports
    their copies. Copy `k` starts as the token `1000 * k`; a swap
    moves tokens between copies (changing them by 1), so every survivor
    must end with a distinct token, whatever exchange the kill cut."""
    strategy = make_strategy(options)
    extended = strategy.extended
    node, n = strategy.node, strategy.num_workers
    victim = options["victim"]
    with tf.device(extended.client_device):
        variable = tf.Variable(tf.zeros([8]))
    combine = variants.slowed(variants.swap, options.get("delay", 100))
    shared = exchange_lib.SharedModel(
        extended.locks,
        extended.client_device,
        [variable],
        "conserve_kill",
        combine=combine,
    )
    shared.initialize(120)
    start_value = np.full([8], 1000.0 * node, np.float32)
    shared.write_own_copy([start_value])
    shared.set_local([start_value])
    barrier = extended.locks.barrier
    barrier(range(n), 120, "start")
    if node == victim:
        # A few exchanges, then the kill at a random point of a later one.
        begin = time.monotonic()
        for _ in range(options["warm"]):
            extended.exchange(shared)
        mean = (time.monotonic() - begin) / options["warm"]
        when = np.random.default_rng().uniform(0, 2 * mean)
        threading.Timer(when, os.kill, (os.getpid(), signal.SIGKILL)).start()
        while True:
            extended.exchange(shared)
    survivors = [k for k in range(n) if k != victim]
    # Exchange until the victim's server stops answering, then on.
    before = 0
    while True:
        extended.exchange(shared)
        before += 1
        try:
            shared.read_copy(victim)
        except tf.errors.OpError:
            break
    for _ in range(options["exchanges"]):
        extended.exchange(shared)
    barrier(survivors, 120, "end")
    result = {
        "node": node,
        "exchanges_before_kill": before,
        "exchanges": {str(k): v for k, v in strategy.exchange_counts.items()},
        "dropped": {str(k): v for k, v in strategy.dropped_peers.items()},
    }
    if node == survivors[0]:
        result["copies"] = {
            str(k): shared.read_copy(k)[0].tolist() for k in survivors
        }
    barrier(survivors, 120, "read")
    report(result)


def phase_kill(options):
    strategy = make_strategy(options)
    node, n = strategy.node, strategy.num_workers
    victim, held = options["victim"], options["held"]
    rng = np.random.default_rng(node)
    x = rng.normal(size=(64 * options["steps"], 8)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("int32")
    with strategy.scope():
        model = classifier(2, 8, 0.05)
    step_times = []
    at_drop = {}

    class Victim(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step_times.append(time.monotonic())
            if victim in strategy.dropped_peers and not at_drop:
                at_drop.update(strategy.exchange_counts)
            if node == victim and batch + 1 == options["die_at"]:
                hold_and_die(strategy, held)
            # The survivors' steps last at least this long, so that they
            # are still training when the victim dies (1 s after it takes
            # the lock), however fast the exchanges are.
            time.sleep(options.get("step_sleep", 0.0))

    start = time.monotonic()
    model.fit(x, y, batch_size=64, callbacks=[Victim()], verbose=0)
    gaps = np.diff([start] + step_times)
    last_step = time.time()
    report(
        {
            "node": node,
            "steps": len(step_times),
            "fit_seconds": time.monotonic() - start,
            "last_step": last_step,
            "longest_step_seconds": float(gaps.max()),
            "exchanges": {
                str(k): v for k, v in strategy.exchange_counts.items()
            },
            "dropped": {str(k): v for k, v in strategy.dropped_peers.items()},
            "exchanges_at_drop": {str(k): v for k, v in at_drop.items()},
        }
    )
    del n


def hold_and_die(strategy, held):
    """Owns `held`'s lease and its mutex, and is killed meanwhile."""
    extended = strategy.extended
    locks = extended.locks
    device = locks.layout.server_device(held)

    @tf.function
    def take_lease(token):
        with tf.device(device):
            token = tf.identity(token)
        return variants.try_acquire(locks, held, token)

    while not bool(take_lease(locks.next_token())):
        time.sleep(0.01)

    @tf.function
    def sit_in_critical_section():
        def body():
            with tf.device(device):
                block = tf.fill([64, 64], 0.01)
                _, block = tf.while_loop(
                    lambda k, _: k < 10**8,
                    lambda k, b: (k + 1, tf.tanh(tf.matmul(b, b))),
                    [tf.constant(0), block],
                )
                return tf.reduce_sum(block)

        return locks.execute(held, body)

    print(
        f"holding the lease and mutex of node {held} at {time.time()}",
        flush=True,
    )
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGKILL)).start()
    sit_in_critical_section()
    time.sleep(60)  # Not reached: SIGKILL comes first.


def fit_until_stopped(model, x, y, options, callback):
    """Trains at most `max_epochs` epochs of batch 32; `callback` stops it."""
    model.fit(
        x,
        y,
        batch_size=32,
        epochs=options["max_epochs"],
        callbacks=[callback],
        verbose=0,
    )


def phase_finish(options):
    """Worker `early` stops training and pauses, then trains again.

    The others train (pausing `step_sleep` per step) until `early` has
    finished its second fit (a file in `options["dir"]` says so). Worker
    `early` reports its shared copy and its served count at the end of its
    first fit and after the pause, and how many exchanges its peers started
    with it during its second fit.
    """
    strategy = make_strategy(options)
    node = strategy.node
    early = options["early"]
    done_file = os.path.join(options["dir"], "early_done")
    rng = np.random.default_rng(node)
    x = rng.normal(size=(4096, 8)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("int32")
    with strategy.scope():
        model = classifier(2, 8, 0.05)
    result = {"node": node}

    def train_until(done):
        """Trains, pausing `step_sleep` per step, until `done()` (or for
        `max_epochs`)."""

        class Until(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                time.sleep(options["step_sleep"])
                if done():
                    self.model.stop_training = True

        fit_until_stopped(model, x, y, options, Until())

    if node == early:
        model.fit(x, y, batch_size=32, steps_per_epoch=10, verbose=0)
        shared = strategy.extended.shared_model(model)
        result["copy_at_end"] = [c.tolist() for c in shared.read_copy(node)]
        result["served_at_end"] = strategy.exchange_counts["served"]
        result["local_at_end"] = [b.tolist() for b in shared.local_buffers()]
        time.sleep(options["pause"])
        result["copy_after_pause"] = [
            c.tolist() for c in shared.read_copy(node)
        ]
        result["served_after_pause"] = strategy.exchange_counts["served"]
        served = result["served_after_pause"]
        train_until(lambda: strategy.exchange_counts["served"] >= served + 2)
        # Idle again: no peer exchange with it completes after this.
        result["served_final"] = strategy.exchange_counts["served"]
        result["served_in_second_fit"] = result["served_final"] - served
        with open(done_file, "w") as f:
            f.write("done")
    else:
        train_until(lambda: os.path.exists(done_file))
        result["early_done"] = os.path.exists(done_file)
    result["exchanges"] = {
        str(k): v for k, v in strategy.exchange_counts.items()
    }
    result["hook_counts"] = dict(strategy.extended.hook_counts)
    report(result)
    time.sleep(2)  # Peers may still be polling this worker's barrier.


def phase_ordered(options):
    """Writes this worker's shared copy directly, then at once runs a solo
    exchange (a `tf.function` reading the copy on this worker's server),
    `repeats` times; counts the exchanges that read a stale copy."""
    strategy = make_strategy(options)
    extended = strategy.extended
    with tf.device(extended.client_device):
        variable = tf.Variable(tf.zeros([64]))
    shared = exchange_lib.SharedModel(
        extended.locks, extended.client_device, [variable], "ordered"
    )
    shared.initialize(120)
    stale = 0
    repeats = options.get("repeats", 100)
    for k in range(1, repeats + 1):
        value = np.full([64], float(k), np.float32)
        shared.write_own_copy([value])
        shared.set_local([value])  # no delta: the exchange returns x_i
        status = shared.exchange(None, extended.locks.next_token())
        stale += int(status != "done" or variable.numpy()[0] != k)
    extended.locks.barrier(range(strategy.num_workers), 120, "ordered")
    report({"node": strategy.node, "stale": stale, "repeats": repeats})


def phase_guard(options):
    """Every client adds to, and counts under a mutex on, node 0's server."""
    del options
    from tf_decentral.strategies.async_gossip import runtime as runtime_lib

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    layout = runtime_lib.layout_from_resolver(resolver)
    runtime_lib.get_runtime(layout, 120)
    locks = exchange_lib.Locks(layout, 30.0)
    node, n = layout.node, layout.num_nodes
    device = layout.server_device(0)
    with tf.device(device):
        total = tf.raw_ops.VarHandleOp(
            dtype=tf.int64, shape=[], container="", shared_name="guard/total"
        )
        count = tf.raw_ops.VarHandleOp(
            dtype=tf.int64, shape=[], container="", shared_name="guard/count"
        )
        mutex = tf.CriticalSection(shared_name="guard/mutex")
        if node == 0:
            zero = tf.constant(0, tf.int64)
            tf.raw_ops.AssignVariableOp(resource=total, value=zero)
            tf.raw_ops.AssignVariableOp(resource=count, value=zero)
    locks.barrier(range(n), 120, "created")

    @tf.function
    def add_and_count():
        with tf.device(device):
            tf.raw_ops.AssignAddVariableOp(
                resource=total, value=tf.constant(1, tf.int64)
            )

            def body():  # read, then write: atomic only under the mutex
                value = tf.raw_ops.ReadVariableOp(
                    resource=count, dtype=tf.int64
                )
                write = tf.raw_ops.AssignVariableOp(
                    resource=count, value=value + 1
                )
                with tf.control_dependencies([write]):
                    return tf.identity(value)

            return mutex.execute(body, exclusive_resource_access=False)

    repeats = 200
    for _ in range(repeats):
        add_and_count()
    locks.barrier(range(n), 120, "added")
    with tf.device(device):
        seen = [
            int(tf.raw_ops.ReadVariableOp(resource=h, dtype=tf.int64))
            for h in (total, count)
        ]
    report(
        {
            "node": node,
            "total": seen[0],
            "count": seen[1],
            "expected": n * repeats,
        }
    )
    locks.barrier(range(n), 120, "read")
    time.sleep(2)  # Peers may still be polling this worker's barrier.


def phase_startup(options):
    """Starts the strategy; every client then reads every server."""
    start = time.monotonic()
    strategy = make_strategy(options)
    nodes = range(strategy.num_workers)
    strategy.extended.locks.barrier(nodes, 60, "started")
    contexts = []

    def dataset_fn(context):
        contexts.append(
            (context.num_input_pipelines, context.input_pipeline_id)
        )
        return tf.data.Dataset.range(4).batch(2)

    strategy.distribute_datasets_from_function(dataset_fn)

    def elements(dataset):
        seen = []
        for batch in strategy.experimental_distribute_dataset(dataset):
            seen.append(batch.numpy().tolist())
        return seen

    whole = tf.data.Options()
    whole.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
    )
    batches = tf.data.Dataset.range(12).batch(2)
    report(
        {
            "node": strategy.node,
            "seconds": time.monotonic() - start,
            "connect_seconds": strategy.extended.runtime.connect_seconds,
            "input_context": contexts[0],
            "default": elements(batches),
            "auto_shard_off": elements(batches.with_options(whole)),
        }
    )
    time.sleep(2)  # Peers may still be polling this worker's barrier.


def phase_checkpoint(options):
    """TensorFlow's multi-worker tutorial: every worker runs this with
    BackupAndRestore and ModelCheckpoint in one folder (`options["dir"]`).

    Reports the training state (weights, then optimizer variables) at the
    start of `fit` (after the restore) and at the end of every epoch, the
    epochs run, the last epoch's loss and accuracy, and the hooks that
    fired. `options["dir"]` may name the worker (`{node}`); with
    `second_fit`, one more epoch follows in a second `fit`.
    """
    strategy = make_strategy(options)
    node = strategy.node
    root = options["dir"].format(node=node)
    kill_epoch = options.get("kill_epoch")
    steps, batch = options.get("steps", 10), 16
    rng = np.random.default_rng(node)  # this worker's own data
    x = rng.normal(size=(steps * batch, 8)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("int32")
    keras.utils.set_random_seed(node)  # different initial models
    with strategy.scope():
        model = classifier(2, 8, 0.05)
    result = {"node": node, "epoch_end": []}

    def state():
        variables = list(model.weights) + list(model.optimizer.variables)
        return [np.asarray(v.numpy()).tolist() for v in variables]

    class Report(keras.callbacks.Callback):
        """Listed after BackupAndRestore and ModelCheckpoint: it sees the
        state they restored and saved."""

        def on_train_begin(self, logs=None):
            result["start"] = state()
            result["initial_epoch"] = _keras_private.initial_epoch(model)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_epoch_end(self, epoch, logs=None):
            result["epoch_end"].append(state())

        def on_train_batch_end(self, batch, logs=None):
            if node == 0 and self.epoch == kill_epoch and batch == 2:
                report(result)
                os.kill(os.getpid(), signal.SIGKILL)

    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(root, "backup")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(root, "model-{epoch}.weights.h5"),
            save_weights_only=True,
        ),
        Report(),
    ]
    history = model.fit(
        x,
        y,
        batch_size=batch,
        epochs=options.get("epochs", 3),
        callbacks=callbacks,
        verbose=0,
        shuffle=False,
    )
    result.update(
        epochs_run=history.epoch,
        loss=history.history["loss"][-1],
        accuracy=history.history["accuracy"][-1],
    )
    if options.get("second_fit"):
        # One more epoch, same callbacks: the model is already averaged with
        # its peers, so each worker keeps its own state (nothing to restore:
        # node 0 removed the backup at the end of the first fit).
        epochs = history.epoch[-1] + 1
        again = model.fit(
            x,
            y,
            batch_size=batch,
            epochs=epochs + 1,
            initial_epoch=epochs,
            callbacks=callbacks[:2],
            verbose=0,
            shuffle=False,
        )
        result["second_fit_epochs"] = again.epoch
    result.update(
        hook_counts=dict(strategy.extended.hook_counts),
        keras_hook_counts=dict(_keras_hooks.hook_counts),
    )
    report(result)
    if kill_epoch is None:
        # Nobody leaves while a peer may still trace a function: TF 2.21
        # registers every new function with every server, and crashed
        # (SIGSEGV) when a peer's server went away during that call.
        nodes = range(strategy.num_workers)
        strategy.extended.locks.barrier(nodes, 60, "done")
        time.sleep(0.3)  # The peer may still be polling this barrier.


def _numpy_accuracy(weights, x, y):
    """Accuracy of `classifier`'s weights (no batch norm), in NumPy: no TF
    function is traced (which would register on every server)."""
    w1, b1, w2, b2 = weights
    hidden = np.maximum(x @ w1 + b1, 0.0)
    return float(np.mean(np.argmax(hidden @ w2 + b2, axis=1) == y))


def phase_rejoin(options):
    """Trains, pausing `step_sleep` per step, until `dir/stop` exists.

    Worker `victim` writes `dir/victim_ready` after `kill_after` steps and
    waits there (the test SIGKILLs it). Its restarted process
    (`restarted`) reports its model's test accuracy after its first step
    (it starts from a peer's copy), trains `steps` steps, writes
    `dir/stop` and reports.
    """
    strategy = make_strategy(options)
    node, n = strategy.node, strategy.num_workers
    restarted = options.get("restarted", False)
    data = np.load(options["data"])
    x, y = data["x_train"][node::n], data["y_train"][node::n]
    x_test, y_test = data["x_test"], data["y_test"]
    keras.utils.set_random_seed(node + (100 if restarted else 0))
    with strategy.scope():
        model = classifier(10, x.shape[1], 0.05)
    stop = os.path.join(options["dir"], "stop")
    result = {"node": node, "restarted": restarted}
    steps = []

    class Pace(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(time.time())
            if len(steps) == 1:
                result["accuracy_after_first_step"] = _numpy_accuracy(
                    self.model.get_weights(), x_test, y_test
                )
            time.sleep(options["step_sleep"])
            if not restarted and node == options["victim"]:
                if len(steps) == options["kill_after"]:
                    open(os.path.join(options["dir"], "victim_ready"), "w")
                    time.sleep(600)  # SIGKILLed here
            if os.path.exists(stop) or (
                restarted and len(steps) >= options["steps"]
            ):
                self.model.stop_training = True

    fit_until_stopped(model, x, y, options, Pace())
    if restarted:
        open(stop, "w").close()
    result["steps"] = len(steps)
    result["exchanges"] = {
        str(k): v for k, v in strategy.exchange_counts.items()
    }
    result["dropped"] = {str(k): v for k, v in strategy.dropped_peers.items()}
    result["accuracy"] = _numpy_accuracy(model.get_weights(), x_test, y_test)
    report(result)


def main(phase, options):
    phases = {
        "fit": phase_fit,
        "finish": phase_finish,
        "conserve": phase_conserve,
        "guard": phase_guard,
        "ordered": phase_ordered,
        "kill": phase_kill,
        "conserve_kill": phase_conserve_kill,
        "exactly_once": phase_exactly_once,
        "startup": phase_startup,
        "checkpoint": phase_checkpoint,
        "rejoin": phase_rejoin,
    }
    phases[phase](options)
    if options.get("normal_exit"):
        return  # Let the interpreter and TF tear down as a user's script.
    # A user's script ends with the interpreter's exit: its `atexit`
    # handlers, among them the strategy's wait for its peers to finish.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    # Then leave without TF's C++ teardown, which the test does not need.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
