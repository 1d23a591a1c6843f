"""One worker of the multi-worker GossipStrategy tests (run with TF_CONFIG).

Usage: gossip_worker.py PHASE TOPOLOGY UPDATE TIMEOUT_SECONDS
Prints one line `RESULT {json}` on success.
"""

import json
import os
import socket
import struct
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_decentral as tfd  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import worker_common  # noqa: E402  (tests/strategies/worker_common.py)
from worker_common import DIM  # noqa: E402
from worker_common import PER_WORKER_BATCH  # noqa: E402
from worker_common import tf_function_in  # noqa: E402
from worker_common import worker_shard  # noqa: E402

STEPS = 3
LR = 0.05


def data(num_workers, steps=STEPS, seed=0):
    """The global data of `steps` global batches (shared with the test)."""
    return worker_common.data(num_workers, steps, seed)


def linear_model(strategy, lr):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(lr), "mse")
    return model


def fit_on_shard(strategy, model, node, num_workers, steps=STEPS):
    x, y = worker_shard(*data(num_workers, steps), node, num_workers)

    def dataset_fn(context):
        del context
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        return ds.batch(PER_WORKER_BATCH)

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    return model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)


# struct tcp_info (linux/tcp.h): 8 one-byte fields, 24 u32, then u64
# pacing_rate, max_pacing_rate, bytes_acked (offset 120; Linux >= 4.1).
_TCP_INFO_BYTES_ACKED = 120


def tcp_bytes_sent():
    """Bytes this process sent on its TCP sockets and the peer acked.

    Per process, so other tests' traffic on the machine (pytest -n 2 runs
    two test files at once) does not count. A socket closed between two
    readings loses its count; gRPC keeps its channels open.
    """
    total = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # not a socket (or already closed)
        with sock:
            if sock.type != socket.SOCK_STREAM or sock.family not in (
                socket.AF_INET,
                socket.AF_INET6,
            ):
                continue
            try:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
            except OSError:
                continue  # a listening socket still answers; others skip
            if len(info) >= _TCP_INFO_BYTES_ACKED + 8:
                (acked,) = struct.unpack_from("Q", info, _TCP_INFO_BYTES_ACKED)
                total += acked
    return total


def _bytes(strategy, node, n, result):
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((DIM,)), keras.layers.Dense(32768)]
        )  # 294912 float32 parameters: 1.2 MB per exchange
        model.compile(keras.optimizers.SGD(0.0), "mse")
    x, y = worker_shard(*data(n, steps=12), node, n)
    y = np.repeat(y, 32768, axis=1)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.batch(PER_WORKER_BATCH).repeat()
    dataset = strategy.distribute_datasets_from_function(lambda c: ds)
    model.fit(dataset, steps_per_epoch=2, verbose=0)  # warm up, trace

    def barrier():  # a scalar all-reduce across every worker
        strategy.extended.global_mean(tf.constant(0.0))

    barrier()
    before = tcp_bytes_sent()
    model.fit(dataset, steps_per_epoch=10, verbose=0)
    barrier()
    result["bytes_sent_per_step"] = (tcp_bytes_sent() - before) / 10
    result["parameter_bytes"] = 4 * model.count_params()


def _contract(strategy, node, n, result):
    model = linear_model(strategy, 0.0)
    rng = np.random.default_rng(100 + node)
    for var in model.trainable_weights:
        var.assign(rng.normal(size=var.shape).astype("float32"))
    result["mean_before"] = [w.tolist() for w in _global_mean(strategy, model)]
    result["d0"] = strategy.consensus_distance(model)
    fit_on_shard(strategy, model, node, n)
    result["d1"] = strategy.consensus_distance(model)
    result["mean_after"] = [w.tolist() for w in _global_mean(strategy, model)]
    result["steps"] = STEPS


def _equiv(strategy, node, n, result):
    model = linear_model(strategy, LR)
    result["initial"] = [w.tolist() for w in model.get_weights()]
    fit_on_shard(strategy, model, node, n)
    result["weights"] = [w.tolist() for w in model.get_weights()]
    result["hook_counts"] = dict(strategy.extended.hook_counts)
    result["distance"] = strategy.consensus_distance(model)
    path = os.environ["GOSSIP_TEST_SAVE"]
    result["wrote"] = strategy.save(model, path)
    strategy.export(model, path + ".exported")
    result["after_save"] = [w.tolist() for w in model.get_weights()]
    strategy.average_weights(model)
    result["averaged"] = [w.tolist() for w in model.get_weights()]


def _die(strategy, node, n, result, phase, timeout):
    """Worker n-1 dies (kill) or hangs (hang); the others report the error."""
    model = linear_model(strategy, LR)
    victim = n - 1

    class _Die(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if node == victim and batch == 1:
                if phase == "kill":
                    os._exit(17)  # a crash: no cleanup, no goodbye
                # Hung: alive, its server still answering heartbeats,
                # but it never joins the next exchange. Only the
                # collective timeout can tell the peers.
                time.sleep(timeout + 5)
                os._exit(18)

    start = time.monotonic()
    try:
        x, y = worker_shard(*data(n, steps=50), node, n)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        dataset = strategy.distribute_datasets_from_function(
            lambda ctx: ds.batch(PER_WORKER_BATCH)
        )
        model.fit(dataset, steps_per_epoch=50, verbose=0, callbacks=[_Die()])
    except Exception as e:  # noqa: BLE001 - reported to the test
        result["error_type"] = type(e).__name__
        result["error"] = str(e)[:3000]
        result["seconds"] = time.monotonic() - start
        print("RESULT " + json.dumps(result), flush=True)
        os._exit(3)  # TF's teardown may block on the dead collective


class _StartState(keras.callbacks.Callback):
    """Records the consensus distance at the start of `fit` (after a
    BackupAndRestore restore) and, with `kill_epoch`, makes the last worker
    die in the middle of that epoch."""

    def __init__(self, strategy, result, kill_epoch, victim):
        super().__init__()
        self.strategy = strategy
        self.result = result
        self.kill_epoch = kill_epoch
        self.victim = victim
        self.epoch = None

    def on_train_begin(self, logs=None):
        distance = self.strategy.consensus_distance(self.model)
        self.result["start_distance"] = distance
        weights = self.model.get_weights()
        self.result["start_weights"] = [w.tolist() for w in weights]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:  # every worker is alive: a collective is safe
            mean = _global_mean(self.strategy, self.model)
            self.result["epoch0_mean"] = [w.tolist() for w in mean]

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.kill_epoch and self.victim and batch == 1:
            os._exit(17)


def _checkpoint(strategy, node, n, result):
    """fit for 3 epochs with BackupAndRestore and ModelCheckpoint in one
    folder shared by every worker ($CHECKPOINT_DIR); with $KILL_EPOCH the
    last worker dies in the middle of that epoch."""
    root = os.environ["CHECKPOINT_DIR"]
    model = linear_model(strategy, LR)
    kill = os.environ.get("KILL_EPOCH")
    x, y = worker_shard(*data(n), node, n)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(PER_WORKER_BATCH)
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: ds.repeat()
    )
    callbacks = [
        # Listed first so that it sees the state BackupAndRestore restored.
        keras.callbacks.BackupAndRestore(os.path.join(root, "backup")),
        _StartState(
            strategy, result, int(kill) if kill else None, node == n - 1
        ),
        keras.callbacks.ModelCheckpoint(
            os.path.join(root, "model-{epoch}.weights.h5"),
            save_weights_only=True,
        ),
    ]
    try:
        history = model.fit(
            dataset, epochs=3, steps_per_epoch=STEPS, verbose=0,
            callbacks=callbacks,
        )  # fmt: skip
    except tf.errors.OpError as e:
        result["error_type"] = type(e).__name__
        print("RESULT " + json.dumps(result), flush=True)
        os._exit(3)  # TF's teardown may block on the dead collective
    result["epochs_run"] = history.epoch
    result["loss"] = history.history["loss"]
    result["distance"] = strategy.consensus_distance(model)


TWO_ROUNDS = np.array(
    [[[0.5, 0.5], [0.5, 0.5]], [[0.75, 0.25], [0.25, 0.75]]], "float32"
)
"""A time-varying topology of two workers (`topology="two_rounds"`)."""

EXCHANGE_OPS = (
    "Case",
    "StatelessCase",
    "CollectiveBcastSendV2",
    "CollectiveBcastRecvV2",
)


def _ancestors(op):
    """Every op that `op` waits for (data and control inputs), transitively."""
    seen, todo = set(), [op]
    while todo:
        current = todo.pop()
        for parent in [t.op for t in current.inputs] + list(
            current.control_inputs
        ):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def exchange_order(model, batch):
    """What the gossip exchange of Keras' step waits for, and what waits
    for it, in the step's graph (`one_step_on_data`)."""
    step = tf_function_in(model.train_function, "one_step_on_data")
    ops = step.get_concrete_function(batch).graph.get_operations()
    exchange = [op for op in ops if op.type in EXCHANGE_OPS]
    gradient = {op for op in ops if "gradient" in op.name.lower()}
    py_functions = {op for op in ops if op.type == "EagerPyFunc"}
    waits_for = set().union(*(_ancestors(op) for op in exchange))
    return {
        "exchange_ops": len(exchange),
        "gradient_ops": len(gradient),
        "py_functions": len(py_functions),
        "exchange_waits_for_gradient": bool(waits_for & gradient),
        "exchange_waits_for_py_function": bool(waits_for & py_functions),
        "py_function_waits_for_exchange": any(
            set(exchange) & _ancestors(op) for op in py_functions
        ),
    }


def _overlap(strategy, node, n, result):
    """D-PSGD with a stateful side op (a `py_function`, as in the
    benchmark's slept compute) in the model: the weights, and the order of
    the exchange in the step's graph."""
    with strategy.scope():
        keras.utils.set_random_seed(1)
        side = keras.layers.Lambda(
            lambda x: (
                x
                + tf.reshape(
                    tf.py_function(lambda: np.float32(0.0), [], tf.float32), []
                )
            )
        )
        model = keras.Sequential(
            [keras.Input((DIM,)), side, keras.layers.Dense(1)]
        )
        model.compile(keras.optimizers.SGD(LR), "mse")
    result["initial"] = [w.tolist() for w in model.get_weights()]
    x, y = worker_shard(*data(n), node, n)
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(
            PER_WORKER_BATCH
        )
    )
    model.fit(dataset, epochs=1, steps_per_epoch=STEPS, verbose=0)
    result["weights"] = [w.tolist() for w in model.get_weights()]
    result["hook_counts"] = dict(strategy.extended.hook_counts)
    result["order"] = exchange_order(model, next(iter(dataset)))


def _threads(strategy, node, n, result):
    """This process's threads before and after 300 more steps of `fit`."""
    model = linear_model(strategy, LR)
    x, y = worker_shard(*data(n, steps=8), node, n)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.batch(PER_WORKER_BATCH).repeat()
    dataset = strategy.distribute_datasets_from_function(lambda c: ds)
    model.fit(dataset, steps_per_epoch=20, verbose=0)  # warm up, trace
    result["threads_before"] = len(os.listdir("/proc/self/task"))
    model.fit(dataset, steps_per_epoch=300, verbose=0)
    result["threads_after"] = len(os.listdir("/proc/self/task"))
    result["hook_counts"] = dict(strategy.extended.hook_counts)


def main(phase, topology, update, timeout):
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=timeout
    )
    if topology == "two_rounds":
        topology = TWO_ROUNDS
    strategy = tfd.GossipStrategy(
        topology, update=update, communication_options=options
    )
    node = strategy.extended.node
    n = strategy.topology.num_nodes
    result = {"node": node, "num_nodes": n}
    if phase == "bytes":
        _bytes(strategy, node, n, result)
    elif phase == "contract":
        _contract(strategy, node, n, result)
    elif phase == "equiv":
        _equiv(strategy, node, n, result)
    elif phase in ("kill", "hang"):
        _die(strategy, node, n, result, phase, timeout)
    elif phase == "checkpoint":
        _checkpoint(strategy, node, n, result)
    elif phase == "overlap":
        _overlap(strategy, node, n, result)
    elif phase == "threads":
        _threads(strategy, node, n, result)
    else:
        raise ValueError(f"Unknown phase {phase!r}")
    print("RESULT " + json.dumps(result), flush=True)


def _global_mean(strategy, model):
    """The exact average over workers, without changing the model."""
    saved = model.get_weights()
    strategy.average_weights(model)
    mean = model.get_weights()
    model.set_weights(saved)
    return mean


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
