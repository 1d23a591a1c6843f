r"""Trains an image classifier with a tf_decentral scheme, on a host or cluster.

One host: every replica is a device, a GPU if the host has at least
`--num_replicas` of them, else a logical CPU (the CPU is split into
`--num_replicas` logical devices that share its cores).

    python examples/train.py --strategy=gossip --topology=ring \
        --num_replicas=4 --dataset=fashion_mnist --epochs=3

A cluster: the same script runs as every task, with `TF_CONFIG` set per task
(the local launcher sets it; on real machines set it yourself, see
`python -m tf_decentral.launch --dry-run`):

    python -m tf_decentral.launch --workers 4 -- \
        python examples/train.py --strategy=gossip --topology=ring

`--compare_allreduce` (one host) trains the same job again under synchronous
all-reduce SGD and prints both results. Datasets load through
`tf_decentral.datasets.load` (`tfds.load`, which prepares Fashion-MNIST from
Debian's `dataset-fashion-mnist` files when the machine is offline).
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

import models  # examples/models.py, next to this script

STRATEGIES = ("gossip", "async_gossip", "downpour", "allreduce", "mirrored")
TOPOLOGIES = (
    "ring",
    "torus",
    "exponential",
    "complete",
    "one_peer_exponential",
    "random_matching",
)

_STRATEGY = flags.DEFINE_enum(
    "strategy",
    "gossip",
    STRATEGIES,
    "gossip: tf_decentral.GossipStrategy (D-PSGD; one host or the workers of "
    "a cluster). async_gossip: tf_decentral.AsyncGossipStrategy (AD-PSGD; "
    "the workers of a cluster, each at its own pace, each on its own shard; "
    "every worker prints its own RESULT). downpour: "
    "tf_decentral.DownpourParameterServerStrategy "
    "(Downpour SGD / the PS protocols of --protocol; a cluster with a chief, "
    "workers and ps tasks: the chief trains, the other tasks serve). "
    "allreduce: tf_decentral.AllReduceStrategy (synchronous "
    "all-reduce SGD across the workers of a cluster; one worker without "
    "one). mirrored: tf.distribute.MirroredStrategy (synchronous all-reduce "
    "SGD on one host).",
)
_TOPOLOGY = flags.DEFINE_enum(
    "topology",
    "ring",
    TOPOLOGIES,
    "Gossip topology over the replicas or workers (tf_decentral.topology).",
)
_UPDATE = flags.DEFINE_enum(
    "update",
    "dpsgd",
    ["dpsgd", "atc"],
    "Gossip update rule: dpsgd (mix, then apply the local gradient) or atc "
    "(apply the local update, then mix).",
)
_NUM_REPLICAS = flags.DEFINE_integer(
    "num_replicas",
    4,
    "One host only: number of replicas (model copies): GPUs if the host has "
    "that many, else logical CPUs. In a cluster every worker uses its own "
    "GPUs, or its CPU.",
    lower_bound=1,
)
_PROTOCOL = flags.DEFINE_enum(
    "protocol",
    "async",
    ["async", "softsync", "sync"],
    "downpour only: async (Downpour / A-PSGD), softsync (the PS applies the "
    "average of every --softsync_n pushes) or sync (S-PSGD).",
)
_N_FETCH = flags.DEFINE_integer(
    "n_fetch",
    1,
    "downpour only: fetch parameters every n steps.",
    lower_bound=1,
)
_N_PUSH = flags.DEFINE_integer(
    "n_push", 1, "downpour only: push gradients every n steps.", lower_bound=1
)
_SOFTSYNC_N = flags.DEFINE_integer(
    "softsync_n",
    None,
    "downpour --protocol=softsync only: pushes averaged per update "
    "(1 <= n <= workers).",
    lower_bound=1,
)
_STALENESS_LR = flags.DEFINE_bool(
    "staleness_lr",
    False,
    "downpour only: divide the learning rate by the measured staleness.",
)
_WARM_START_STEPS = flags.DEFINE_integer(
    "warm_start_steps",
    0,
    "downpour only: run the first steps one at a time (no staleness).",
    lower_bound=0,
)
_DATASET = flags.DEFINE_string(
    "dataset",
    "fashion_mnist",
    "tfds dataset name with image/label features and train/test splits.",
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "tfds data directory (default: tfds' own default)."
)
_SYNTHETIC_DATA = flags.DEFINE_bool(
    "synthetic_data",
    False,
    "Use tfds.testing.mock_data: random data of the dataset's shape, for "
    "smoke tests of the plumbing (accuracy is meaningless).",
)
_MODEL = flags.DEFINE_enum(
    "model",
    "mlp",
    list(models.NAMES),
    "Model: mlp, cnn, or resnet20 (the D-PSGD paper's CIFAR-10 model).",
)
_OPTIMIZER = flags.DEFINE_enum(
    "optimizer",
    "momentum",
    ["sgd", "momentum", "adam", "adamw", "adagrad"],
    "Optimizer: sgd, momentum (SGD with momentum 0.9), adam, adamw, adagrad.",
)
_LEARNING_RATE = flags.DEFINE_float(
    "learning_rate",
    0.02,
    "Learning rate, in (0, 10].",
    lower_bound=0.0,
    upper_bound=10.0,
)
flags.register_validator(
    "learning_rate",
    lambda value: value > 0,
    message="--learning_rate must be > 0 (0 would not train).",
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    32,
    "Batch size PER REPLICA: every replica (device) takes this many examples "
    "per step; the global batch is this times the number of replicas.",
    lower_bound=1,
)
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs.", lower_bound=1)
_STEPS_PER_EPOCH = flags.DEFINE_integer(
    "steps_per_epoch",
    None,
    "Training steps per epoch (default: one pass over this worker's share "
    "of the training split).",
    lower_bound=1,
)
_MODEL_DIR = flags.DEFINE_string(
    "model_dir",
    None,
    "If set: BackupAndRestore checkpoints and TensorBoard logs (one folder "
    "per task), results.json and the final model.keras (the consensus model "
    "for gossip, written by the chief).",
)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (model, data order).")
_CONSENSUS_EVERY = flags.DEFINE_integer(
    "consensus_every",
    50,
    "Gossip only: show the consensus distance every this many steps (0: only "
    "at epoch ends). Across workers it is a collective call.",
    lower_bound=0,
)
_TIMEOUT = flags.DEFINE_float(
    "collective_timeout",
    120.0,
    "Cluster only: seconds before a collective waiting for a dead or "
    "unreachable worker raises instead of hanging; in (0, 86400].",
    lower_bound=0.0,
    upper_bound=86400.0,
)
flags.register_validator(
    "collective_timeout",
    lambda value: value > 0,
    message="--collective_timeout must be > 0 seconds (0 would wait forever).",
)
_COMPARE = flags.DEFINE_bool(
    "compare_allreduce",
    False,
    "One host only: after training, train the same job with "
    "MirroredStrategy (all-reduce) and print both results.",
)
_VERBOSE = flags.DEFINE_enum(
    "verbose", "auto", ["auto", "0", "1", "2"], "Keras fit verbosity."
)


def _cluster():
    """Returns the TF_CONFIG cluster (or None when training on one host)."""
    from tf_decentral import cluster

    config = cluster.from_env()
    if config is None:
        return None
    if config.num_workers + int(config.has_chief) < 2 and not config.num_ps:
        return None
    return config


def _check_flags(config):
    if _PROTOCOL.value == "softsync" and _SOFTSYNC_N.value is None:
        raise app.UsageError(
            "--protocol=softsync needs --softsync_n (the number of pushes "
            "the PS averages per update). Received: no --softsync_n."
        )
    if _STRATEGY.value == "downpour":
        if config is None or not config.num_ps:
            raise app.UsageError(
                "--strategy=downpour needs a cluster with ps tasks. Received: "
                + ("no TF_CONFIG" if config is None else "no ps tasks")
                + ". Run it under `python -m tf_decentral.launch --workers 2 "
                "--ps 1 --chief -- python examples/train.py "
                "--strategy=downpour ...`."
            )
        return
    if _STRATEGY.value == "async_gossip" and config is None:
        raise app.UsageError(
            "--strategy=async_gossip needs a cluster of at least 2 workers. "
            "Received: no TF_CONFIG. Run it under `python -m "
            "tf_decentral.launch --workers 4 -- python examples/train.py "
            "--strategy=async_gossip ...`."
        )
    if config is None:
        if _STRATEGY.value == "gossip" and _NUM_REPLICAS.value < 2:
            raise app.UsageError(
                "--strategy=gossip needs at least 2 replicas. Received: "
                f"--num_replicas={_NUM_REPLICAS.value}"
            )
        return
    if config.num_ps:
        raise app.UsageError(
            f"--strategy={_STRATEGY.value} trains on chief and worker "
            f"tasks only. Received: a TF_CONFIG with {config.num_ps} ps "
            "tasks. Launch without --ps."
        )
    if _STRATEGY.value == "mirrored":
        raise app.UsageError(
            "--strategy=mirrored trains on one host. Received: a TF_CONFIG "
            "cluster. Use --strategy=allreduce for all-reduce SGD across "
            "workers."
        )
    if _COMPARE.value:
        raise app.UsageError(
            "--compare_allreduce runs on one host. Received: a TF_CONFIG "
            "cluster. Launch a separate --strategy=allreduce run instead."
        )


def _local_devices(num_replicas):
    """Returns one device per replica, creating logical CPUs if needed."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) >= num_replicas:
        return [f"/device:GPU:{i}" for i in range(num_replicas)]
    import tf_decentral as tfd

    return tfd.testing.logical_cpus(num_replicas)


def _optimizer(name, learning_rate):
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate)
    if name == "momentum":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adagrad":
        return keras.optimizers.Adagrad(learning_rate)
    return keras.optimizers.AdamW(learning_rate, weight_decay=1e-4)


def _make_strategy(name, config, devices):
    import tensorflow as tf

    import tf_decentral as tfd

    options = None
    if config is not None:
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=_TIMEOUT.value
        )
    if name == "gossip":
        return tfd.strategies.get(
            "gossip",
            topology=_TOPOLOGY.value,
            devices=devices,
            update=_UPDATE.value,
            communication_options=options,
        )
    if name == "async_gossip":
        return tfd.strategies.get(
            "async_gossip",
            topology=_TOPOLOGY.value,
            seed=_SEED.value,
            communication_options=options,
        )
    if name == "downpour":
        return tfd.strategies.get(
            "downpour",
            n_fetch=_N_FETCH.value,
            n_push=_N_PUSH.value,
            protocol=_PROTOCOL.value,
            softsync_n=_SOFTSYNC_N.value,
            staleness_lr=_STALENESS_LR.value,
            warm_start_steps=_WARM_START_STEPS.value,
        )
    if name == "allreduce":
        return tfd.strategies.get("allreduce", communication_options=options)
    return tfd.strategies.get("mirrored", devices=devices)


def _load(split, with_info=False):
    from tf_decentral import datasets

    return datasets.load(
        _DATASET.value,
        split=split,
        data_dir=_DATA_DIR.value,
        with_info=with_info,
    )


def _datasets(strategy, seed):
    """Returns the distributed training data, the test data and the shapes.

    Every worker reads its own shard of the training split (one input
    pipeline per worker), batched per replica.
    """
    import tensorflow as tf

    train, info = _load("train", with_info=True)
    test = _load("test")
    per_replica = _BATCH_SIZE.value
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
    )

    def scale(image, label):
        return tf.cast(image, tf.float32) / 255.0, label

    def train_fn(context):
        ds = train.with_options(options).shard(
            context.num_input_pipelines, context.input_pipeline_id
        )
        return (
            ds.shuffle(10_000, seed=seed + context.input_pipeline_id)
            .map(scale, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(per_replica, drop_remainder=True)
            .repeat()
            .prefetch(tf.data.AUTOTUNE)
        )

    if _STRATEGY.value == "downpour":
        # The chief's coordinator hands batches to the workers' closures.
        distributed = train_fn(tf.distribute.InputContext())
    else:
        distributed = strategy.distribute_datasets_from_function(train_fn)
    # Evaluation: every worker evaluates the full test split.
    test = (
        test.with_options(options)
        .map(scale)
        .batch(per_replica * strategy.num_replicas_in_sync)
        .prefetch(tf.data.AUTOTUNE)
    )
    num_train = int(train.cardinality())  # known for tfds (and mock) data
    if num_train < 0:
        num_train = info.splits["train"].num_examples
    # Steps per epoch: one pass over the training split by all replicas (an
    # AsyncGossipStrategy worker is one replica of `num_workers`).
    replicas = strategy.num_replicas_in_sync
    if _STRATEGY.value == "async_gossip":
        replicas = strategy.num_workers
    steps = num_train // (per_replica * replicas)
    shape = info.features["image"].shape
    classes = info.features["label"].num_classes
    return distributed, test, shape, classes, max(1, steps)


def train_once(strategy_name, config, devices):
    """Trains and evaluates one run; returns a dict of results."""
    import keras

    import tf_decentral as tfd

    keras.utils.set_random_seed(_SEED.value)
    strategy = _make_strategy(strategy_name, config, devices)
    train, test, shape, classes, steps = _datasets(strategy, _SEED.value)
    with strategy.scope():
        model = models.build(_MODEL.value, shape, classes)
        model.compile(
            optimizer=_optimizer(_OPTIMIZER.value, _LEARNING_RATE.value),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    gossip = strategy_name in ("gossip", "async_gossip")
    callbacks = []
    if gossip:
        callbacks.append(
            tfd.callbacks.ConsensusMonitor(every_n_steps=_CONSENSUS_EVERY.value)
        )
    task = config.task_name.replace(":", "_") if config else "local"
    run_dir = None
    if _MODEL_DIR.value:
        run_dir = os.path.join(_MODEL_DIR.value, strategy_name)
        callbacks += [
            keras.callbacks.BackupAndRestore(
                os.path.join(run_dir, "backup", task)
            ),
            keras.callbacks.TensorBoard(os.path.join(run_dir, "logs", task)),
        ]
    if strategy_name == "async_gossip":
        label = f"async_gossip({_TOPOLOGY.value})"
    elif gossip:
        label = f"gossip({_TOPOLOGY.value}, {_UPDATE.value})"
    elif strategy_name == "downpour":
        label = (
            f"downpour({_PROTOCOL.value}, n_fetch={_N_FETCH.value}, "
            f"n_push={_N_PUSH.value})"
        )
    elif strategy_name == "allreduce":
        label = "all-reduce(AllReduceStrategy)"
    else:
        label = "all-reduce(MirroredStrategy)"
    if config is None:
        where = f"{strategy.num_replicas_in_sync} replicas"
    elif strategy_name == "downpour":
        where = f"{config.num_workers} workers and {config.num_ps} ps"
    else:
        trainers = config.num_workers + int(config.has_chief)
        where = f"{config.task_name} of {trainers} workers"
    print(f"Training {label} on {where}", flush=True)
    verbose = _VERBOSE.value
    verbose = verbose if verbose == "auto" else int(verbose)
    start = time.perf_counter()
    history = model.fit(
        train,
        epochs=_EPOCHS.value,
        steps_per_epoch=_STEPS_PER_EPOCH.value or steps,
        callbacks=callbacks,
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    result = {
        "label": label,
        "where": where,
        "replicas": strategy.num_replicas_in_sync,
        "seconds": seconds,
        "final_loss": history.history["loss"][-1],
    }
    if gossip:
        result["consensus_distance"] = strategy.consensus_distance(model)
        # Each replica (or worker) evaluates its own copy.
        result["local_accuracy"] = model.evaluate(test, verbose=0)[1]
        if strategy_name == "async_gossip":
            result["exchanges"] = strategy.exchange_counts
            result["active"] = strategy.is_active
            result["dropped_peers"] = strategy.dropped_peers
        # Every worker calls it (a collective for the multi-worker ones).
        strategy.average_weights(model)
    if strategy_name == "downpour":
        result["staleness"] = strategy.staleness_histogram()
        result["ps_stats"] = strategy.ps_stats()
    result["accuracy"] = model.evaluate(test, verbose=0)[1]
    if run_dir:
        path = os.path.join(run_dir, "model.keras")
        if strategy_name == "gossip":
            strategy.save(model, path)
        elif config is None or config.is_chief:
            model.save(path)
    return result


def _describe(result):
    text = (
        f"{result['label']} on {result['where']}: test accuracy "
        f"{result['accuracy']:.4f}"
    )
    if "consensus_distance" in result:
        text += (
            f" (averaged model; local copy {result['local_accuracy']:.4f}), "
            f"consensus distance {result['consensus_distance']:.3g}"
        )
    if "exchanges" in result:
        exchanges = result["exchanges"]
        peers = sum(v for k, v in exchanges.items() if isinstance(k, int))
        if result["active"]:
            text += f", {peers} exchanges started"
        else:
            text += (
                f", passive (averaged {exchanges.get('served', 0)} times by "
                "its active peers)"
            )
        if exchanges.get("idle"):
            text += (
                f", {exchanges['idle']} attempts found a peer's fit over "
                "(skipped it)"
            )
        if result["dropped_peers"]:
            text += f", dropped peers {sorted(result['dropped_peers'])}"
    if "staleness" in result:
        histogram = result["staleness"]
        pushes = sum(histogram.values())
        mean = sum(k * v for k, v in histogram.items()) / max(pushes, 1)
        text += (
            f", {pushes} pushes, mean staleness {mean:.2f} "
            f"(max {max(histogram, default=0)})"
        )
    return text + f", {result['seconds']:.1f} s"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # tfds logs every file it opens
    config = _cluster()
    _check_flags(config)
    if _STRATEGY.value == "downpour" and config.task_type != "chief":
        import tf_decentral as tfd

        print(f"{config.task_name} serving for the chief", flush=True)
        tfd.cluster.run_server(config)  # returns only on the chief
        return 0
    devices = None
    if config is None and _STRATEGY.value != "allreduce":
        devices = _local_devices(_NUM_REPLICAS.value)
    if _SYNTHETIC_DATA.value:
        import tensorflow_datasets as tfds

        with tfds.testing.mock_data(num_examples=512):
            results = _run(config, devices)
    else:
        results = _run(config, devices)
    if _MODEL_DIR.value and (config is None or config.is_chief):
        with open(os.path.join(_MODEL_DIR.value, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    print("RESULT " + " | ".join(_describe(r) for r in results), flush=True)
    return 0


def _run(config, devices):
    results = [train_once(_STRATEGY.value, config, devices)]
    if _COMPARE.value and _STRATEGY.value != "mirrored":
        results.append(train_once("mirrored", config, devices))
    return results


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(app.run(main))
