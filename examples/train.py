r"""Trains an image classifier with a tf_decentral strategy on one host.

Every replica is one device: a GPU if the host has at least `--num_replicas`
of them, else a logical CPU (the CPU is split into `--num_replicas` logical
devices that share its cores).

    python examples/train.py --strategy=gossip --topology=ring \
        --num_replicas=4 --dataset=fashion_mnist --epochs=3

`--compare_allreduce` trains the same job again under synchronous all-reduce
SGD (`tf.distribute.MirroredStrategy`) and prints both results side by side.
Datasets load through `tf_decentral.datasets.load` (plain `tfds.load`, which
prepares Fashion-MNIST from Debian's `dataset-fashion-mnist` files when the
machine is offline).
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

import models  # examples/models.py, next to this script

_STRATEGY = flags.DEFINE_enum(
    "strategy",
    "gossip",
    ["gossip", "mirrored"],
    "gossip: tf_decentral.GossipStrategy (D-PSGD); mirrored: synchronous "
    "all-reduce SGD with tf.distribute.MirroredStrategy.",
)
_TOPOLOGY = flags.DEFINE_enum(
    "topology",
    "ring",
    [
        "ring",
        "torus",
        "exponential",
        "complete",
        "one_peer_exponential",
        "random_matching",
    ],
    "Gossip topology over the replicas (see tf_decentral.topology).",
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
    "Number of replicas (model copies) on this host: GPUs if there are that "
    "many, else logical CPUs.",
    lower_bound=1,
)
_DATASET = flags.DEFINE_string(
    "dataset", "fashion_mnist", "tfds dataset name with image/label features."
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "tfds data directory (default: tfds' own default)."
)
_MODEL = flags.DEFINE_enum("model", "mlp", list(models.NAMES), "Model.")
_OPTIMIZER = flags.DEFINE_enum(
    "optimizer",
    "momentum",
    ["sgd", "momentum", "adam", "adamw"],
    "Optimizer: sgd, momentum (SGD with momentum 0.9), adam, adamw.",
)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.02, "Learning rate.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    32,
    "Batch size PER REPLICA; the global batch is this times --num_replicas.",
    lower_bound=1,
)
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs.", lower_bound=1)
_STEPS_PER_EPOCH = flags.DEFINE_integer(
    "steps_per_epoch",
    None,
    "Training steps per epoch (default: one pass over the training split).",
)
_MODEL_DIR = flags.DEFINE_string(
    "model_dir",
    None,
    "If set: BackupAndRestore checkpoints, TensorBoard logs and the final "
    "model.keras go here.",
)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (model, data order).")
_CONSENSUS_EVERY = flags.DEFINE_integer(
    "consensus_every",
    50,
    "Gossip only: show the consensus distance every this many steps.",
    lower_bound=0,
)
_COMPARE = flags.DEFINE_bool(
    "compare_allreduce",
    False,
    "After training, train the same job with MirroredStrategy (all-reduce) "
    "and print both results.",
)
_VERBOSE = flags.DEFINE_enum(
    "verbose", "auto", ["auto", "0", "1", "2"], "Keras fit verbosity."
)


def _make_devices(num_replicas):
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
    return keras.optimizers.AdamW(learning_rate, weight_decay=1e-4)


def _datasets(name, data_dir, global_batch, seed):
    import tensorflow as tf

    from tf_decentral import datasets

    train, info = datasets.load(
        name, split="train", data_dir=data_dir, with_info=True
    )
    test = datasets.load(name, split="test", data_dir=data_dir)

    def scale(image, label):
        return tf.cast(image, tf.float32) / 255.0, label

    # One host: the strategy splits each global batch across its replicas.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
    )
    train = (
        train.with_options(options)
        .shuffle(10_000, seed=seed)
        .map(scale, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(global_batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    test = (
        test.with_options(options)
        .map(scale)
        .batch(global_batch)
        .prefetch(tf.data.AUTOTUNE)
    )
    shape = info.features["image"].shape
    classes = info.features["label"].num_classes
    return train, test, shape, classes


def _strategy(name, devices):
    import tf_decentral as tfd

    if name == "gossip":
        return tfd.strategies.get(
            "gossip",
            topology=_TOPOLOGY.value,
            devices=devices,
            update=_UPDATE.value,
        )
    return tfd.strategies.get("mirrored", devices=devices)


def train_once(strategy_name, devices):
    """Trains and evaluates one run; returns a dict of results."""
    import keras

    import tf_decentral as tfd

    keras.utils.set_random_seed(_SEED.value)
    global_batch = _BATCH_SIZE.value * len(devices)
    train, test, shape, classes = _datasets(
        _DATASET.value, _DATA_DIR.value, global_batch, _SEED.value
    )
    strategy = _strategy(strategy_name, devices)
    with strategy.scope():
        model = models.build(_MODEL.value, shape, classes)
        model.compile(
            optimizer=_optimizer(_OPTIMIZER.value, _LEARNING_RATE.value),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    callbacks = []
    gossip = strategy_name == "gossip"
    if gossip:
        callbacks.append(
            tfd.callbacks.ConsensusMonitor(every_n_steps=_CONSENSUS_EVERY.value)
        )
    run_dir = None
    if _MODEL_DIR.value:
        run_dir = os.path.join(_MODEL_DIR.value, strategy_name)
        callbacks += [
            keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup")),
            keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")),
        ]
    label = (
        f"gossip({_TOPOLOGY.value}, {_UPDATE.value})"
        if gossip
        else "all-reduce(MirroredStrategy)"
    )
    print(f"Training {label} on {len(devices)} replicas: {devices}", flush=True)
    verbose = _VERBOSE.value
    verbose = verbose if verbose == "auto" else int(verbose)
    start = time.perf_counter()
    model.fit(
        train,
        epochs=_EPOCHS.value,
        steps_per_epoch=_STEPS_PER_EPOCH.value,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the dataset is shuffled above
    )
    seconds = time.perf_counter() - start
    result = {"label": label, "replicas": len(devices), "seconds": seconds}
    if gossip:
        result["consensus_distance"] = strategy.consensus_distance(model)
        # Each replica evaluates its own copy on its shard of the test set.
        result["local_accuracy"] = model.evaluate(test, verbose=0)[1]
        strategy.average_weights(model)
    result["accuracy"] = model.evaluate(test, verbose=0)[1]
    if run_dir:
        model.save(os.path.join(run_dir, "model.keras"))
    return result


def _describe(result):
    text = (
        f"{result['label']} on {result['replicas']} replicas: test accuracy "
        f"{result['accuracy']:.4f}"
    )
    if "consensus_distance" in result:
        text += (
            f" (averaged model; local copies {result['local_accuracy']:.4f}), "
            f"consensus distance {result['consensus_distance']:.3g}"
        )
    return text + f", {result['seconds']:.1f} s"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _STRATEGY.value == "gossip" and _NUM_REPLICAS.value < 2:
        raise app.UsageError(
            "--strategy=gossip needs --num_replicas >= 2. "
            f"Received: --num_replicas={_NUM_REPLICAS.value}"
        )
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # tfds logs every file it opens
    devices = _make_devices(_NUM_REPLICAS.value)
    results = [train_once(_STRATEGY.value, devices)]
    if _COMPARE.value and _STRATEGY.value != "mirrored":
        results.append(train_once("mirrored", devices))
    if _MODEL_DIR.value:
        with open(os.path.join(_MODEL_DIR.value, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    line = "RESULT " + " | ".join(_describe(r) for r in results)
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(app.run(main))
