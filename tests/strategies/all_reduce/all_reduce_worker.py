"""One worker of the multi-worker AllReduceStrategy tests (run with TF_CONFIG).

Usage: all_reduce_worker.py PHASE STEP_LOGS TIMEOUT_SECONDS
PHASE: "fit" (train and report), "fit_spe" (the same with
`steps_per_execution=2`), "kill" (worker 1 dies after a few steps
and the others report their error) or "hang" (worker 1 stops taking part
after a few steps, for longer than the collective timeout). Prints one line
`RESULT {json}`.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_decentral as tfd  # noqa: E402
from tf_decentral.strategies import _keras_hooks  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import worker_common  # noqa: E402  (tests/strategies/worker_common.py)
from worker_common import DIM  # noqa: E402
from worker_common import PER_WORKER_BATCH  # noqa: E402
from worker_common import tf_function_in  # noqa: E402
from worker_common import worker_shard  # noqa: E402

STEPS = 4
LR = 0.05


def data(num_workers, steps=STEPS, seed=0):
    """The global data of `steps` global batches (shared with the test)."""
    return worker_common.data(num_workers, steps, seed)


COLLECTIVE_OPS = {"CollectiveReduceV2", "CollectiveGatherV2"}


def linear_model(strategy, steps_per_execution=1):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(1)])
        model.compile(
            keras.optimizers.SGD(LR),
            "mse",
            metrics=["mae"],
            steps_per_execution=steps_per_execution,
        )
    return model


class BatchLogs(keras.callbacks.Callback):
    """Keeps every batch's logs; with `die_after`, the worker crashes after
    that many batches, or with `hang_seconds` hangs there that long (alive,
    its server answering, but in no collective) and then exits."""

    def __init__(self, die_after=None, hang_seconds=None):
        super().__init__()
        self.logs = []
        self.die_after = die_after
        self.hang_seconds = hang_seconds

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(v) for k, v in (logs or {}).items()})
        if self.die_after is not None and batch + 1 == self.die_after:
            if self.hang_seconds is not None:
                time.sleep(self.hang_seconds)
            os._exit(17)



def count_collectives(function, batch):
    """Collective ops in the graph of Keras' one training step (and every
    function it calls) in `function`, traced for `batch`."""
    step = tf_function_in(function, "one_step_on_data")
    concrete = step.get_concrete_function(batch)
    graph_def = concrete.graph.as_graph_def()
    nodes = list(graph_def.node)
    for fdef in graph_def.library.function:
        nodes.extend(fdef.node_def)
    return sum(node.op in COLLECTIVE_OPS for node in nodes)


class KillAt(keras.callbacks.Callback):
    """Exits this process in the middle of epoch `epoch` (0-based)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch
        self.current = None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 1:
            os._exit(17)


def phase_checkpoint(strategy, dataset, node):
    """fit with BackupAndRestore and ModelCheckpoint in $CHECKPOINT_DIR
    (one shared folder, or one per task with $PER_TASK=1); with
    $KILL_EPOCH, worker 1 dies in the middle of that epoch."""
    root = os.environ["CHECKPOINT_DIR"]
    if os.environ.get("PER_TASK") == "1":
        root = os.path.join(root, f"task{node}")
    model = linear_model(strategy)
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(root, "backup")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(root, "model-{epoch}.weights.h5"),
            save_weights_only=True,
        ),
    ]
    kill_epoch = os.environ.get("KILL_EPOCH")
    if kill_epoch and node == 1:
        callbacks.append(KillAt(int(kill_epoch)))
    history = model.fit(
        dataset,
        epochs=3,
        steps_per_epoch=STEPS,
        verbose=0,
        callbacks=callbacks,
    )
    return {
        "node": node,
        "weights": [w.tolist() for w in model.get_weights()],
        "epochs_run": history.epoch,
        "hook_counts": dict(_keras_hooks.hook_counts),
    }


def phase_threads(strategy, model, node, x, y):
    """This process's threads before and after 300 more steps of `fit`."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.batch(PER_WORKER_BATCH).repeat()
    dataset = strategy.distribute_datasets_from_function(lambda c: ds)
    model.fit(dataset, steps_per_epoch=20, verbose=0)  # warm up, trace
    before = len(os.listdir("/proc/self/task"))
    model.fit(dataset, steps_per_epoch=300, verbose=0)
    return {
        "node": node,
        "threads_before": before,
        "threads_after": len(os.listdir("/proc/self/task")),
        "hook_counts": dict(strategy.extended.hook_counts),
    }


def main(phase, step_logs, timeout):
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=timeout
    )
    strategy = tfd.AllReduceStrategy(
        communication_options=options, step_logs=step_logs
    )
    num_workers = strategy.num_replicas_in_sync
    node = strategy.cluster_resolver.task_id
    # "fit_spe": Keras runs 2 steps per call, in a tf.while_loop.
    model = linear_model(strategy, 2 if phase == "fit_spe" else 1)
    x, y = worker_shard(*data(num_workers, STEPS), node, num_workers)

    def dataset_fn(context):
        del context
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.batch(PER_WORKER_BATCH)
        return ds.repeat() if phase == "checkpoint" else ds

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    if phase == "threads":
        result = phase_threads(strategy, model, node, x, y)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if phase == "checkpoint":
        try:
            result = phase_checkpoint(strategy, dataset, node)
        except tf.errors.OpError as e:
            result = {"node": node, "error_type": type(e).__name__}
        print("RESULT " + json.dumps(result), flush=True)
        return
    dies = phase in ("kill", "hang") and node == 1
    batch_logs = BatchLogs(
        2 if dies else None,
        timeout + 5 if phase == "hang" else None,
    )
    start = time.monotonic()
    result = {"node": node}
    try:
        history = model.fit(
            dataset,
            epochs=2 if phase in ("kill", "hang") else 1,
            steps_per_epoch=STEPS,
            verbose=0,
            callbacks=[batch_logs],
        )
    except tf.errors.OpError as e:
        result.update(
            error_type=type(e).__name__,
            error=e.message,
            seconds=time.monotonic() - start,
        )
        print("RESULT " + json.dumps(result), flush=True)
        return
    result.update(
        weights=[w.tolist() for w in model.get_weights()],
        history={k: v for k, v in history.history.items()},
        batch_logs=batch_logs.logs,
        hook_counts=dict(strategy.extended.hook_counts),
    )
    if phase == "fit":
        result["collectives"] = count_collectives(
            model.train_function, next(iter(dataset))
        )
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
