"""Every private Keras name tf_decentral uses, in one place.

Keras 3 has no extension point for a `tf.distribute` strategy that does not
all-reduce gradients, nor for one that runs the training step itself: the
hooks in `tf_decentral/strategies/_keras_hooks.py` wrap methods of private
classes of the TensorFlow backend (`keras.src.backend.tensorflow`), and the
Downpour worker reads a few private attributes of models and optimizers.
This module is the only one that touches them; `PRIVATE_NAMES` says why
each is needed. `tests/private_names_test.py` enforces both.

The TensorFlow counterpart is `tf_decentral/_tf_private.py`.
"""

# pylint: disable=g-direct-tensorflow-import
import contextlib
import os

import keras
from keras.src.backend.tensorflow import optimizer as _keras_tf_optimizer
from keras.src.backend.tensorflow import trainer as _keras_tf_trainer

PRIVATE_NAMES = {}

# =====================================================================
# Common: the Keras hooks (strategies/_keras_hooks.py)
# =====================================================================

PRIVATE_NAMES.update(
    {
        "keras.src.backend.tensorflow.optimizer": (
            "the TensorFlow backend's optimizer base class `TFOptimizer`, "
            "whose gradient all-reduce and cross-replica update the "
            "strategies take over"
        ),
        "keras.src.backend.tensorflow.trainer": (
            "the TensorFlow backend's `TensorFlowTrainer`, whose fit, train "
            "function, epoch-end logs and metric reset the strategies hook"
        ),
        "_all_reduce_sum_gradients": (
            "TFOptimizer's one batched gradient all-reduce per step (replica "
            "context): gossip keeps gradients local instead"
        ),
        "_distributed_tf_update_step": (
            "TFOptimizer's cross-replica update of every variable (inside "
            "merge_call): gossip mixes all variables of a step at once "
            "around it"
        ),
        "_get_metrics_result_or_logs": (
            "TensorFlowTrainer's end-of-epoch logs, called once per epoch "
            "before the epoch's callbacks: a FitDriver finishes its "
            "asynchronous work there so checkpoints see every committed "
            "update"
        ),
        "_save_model": (
        "BackupAndRestore's and ModelCheckpoint's one write of a checkpoint: "
        "on a cluster only the chief writes where the user asked"
    ),
    "_weights_path": "the file BackupAndRestore writes the weights to",
    "_training_metadata_path": "the file BackupAndRestore writes the epoch to",
    "_prev_weights_path": "BackupAndRestore's previous weights file",
    "_prev_training_metadata_path": (
        "BackupAndRestore's previous epoch file"
    ),
    "_initial_epoch": (
        "the epoch BackupAndRestore tells fit to resume at, which every "
        "worker must agree on"
    ),
    "_distribute_strategy": (
            "the strategy a Keras model was built under (Trainer attribute), "
            "which decides whether our hooks act"
        ),
        "_distribution_strategy": (
            "the strategy a Keras optimizer was created under (BaseOptimizer "
            "attribute), which decides whether it is built on a FitDriver's "
            "variables"
        ),
    }
)

TFOptimizer = _keras_tf_optimizer.TFOptimizer
TensorFlowTrainer = _keras_tf_trainer.TensorFlowTrainer

PATCH_TARGETS = {
    "optimizer_reduce_gradients": (
        TFOptimizer,
        TFOptimizer._all_reduce_sum_gradients.__name__,
    ),
    "optimizer_apply_gradients": (
        TFOptimizer,
        TFOptimizer._distributed_tf_update_step.__name__,
    ),
    "optimizer_init": (TFOptimizer, "__init__"),
    "trainer_fit": (TensorFlowTrainer, "fit"),
    "trainer_make_train_function": (TensorFlowTrainer, "make_train_function"),
    "trainer_epoch_logs": (
        TensorFlowTrainer,
        TensorFlowTrainer._get_metrics_result_or_logs.__name__,
    ),
    "trainer_reset_metrics": (TensorFlowTrainer, "reset_metrics"),
    "backup_restore": (keras.callbacks.BackupAndRestore, "on_train_begin"),
    "backup_save": (
        keras.callbacks.BackupAndRestore,
        keras.callbacks.BackupAndRestore._save_model.__name__,
    ),
    "backup_cleanup": (keras.callbacks.BackupAndRestore, "on_train_end"),
    "checkpoint_save": (
        keras.callbacks.ModelCheckpoint,
        keras.callbacks.ModelCheckpoint._save_model.__name__,
    ),
}
"""Patch name -> (Keras class, method) that `_keras_hooks.PATCHES` wraps."""


_BACKUP_PATHS = (
    "_weights_path",
    "_training_metadata_path",
    "_prev_weights_path",
    "_prev_training_metadata_path",
)


@contextlib.contextmanager
def backup_written_to(callback, directory):
    """A `BackupAndRestore` writes (and reads) its backup in `directory`
    instead of its `backup_dir` within the block.

    Args:
        callback: A `BackupAndRestore`, or None (nothing is redirected).
        directory: Where its files go meanwhile.
    """
    if callback is None:
        yield
        return
    saved = {name: getattr(callback, name) for name in _BACKUP_PATHS}
    saved_dir = callback.backup_dir
    try:
        callback.backup_dir = directory
        for name, path in saved.items():
            moved = os.path.join(directory, os.path.basename(path))
            setattr(callback, name, moved)
        yield
    finally:
        callback.backup_dir = saved_dir
        for name, path in saved.items():
            setattr(callback, name, path)


def initial_epoch(model):
    """The epoch `fit` resumes at (set by BackupAndRestore), or None."""
    return model._initial_epoch


def set_initial_epoch(model, epoch):
    model._initial_epoch = epoch


def model_strategy(model):
    """The `tf.distribute` strategy `model` was built under, or None."""
    return getattr(model, "_distribute_strategy", None)


def optimizer_strategy(optimizer):
    """The `tf.distribute` strategy `optimizer` was created under, or None.

    Downpour also refuses an optimizer made outside its scope (its slots
    would not be on the ps)."""
    return getattr(optimizer, "_distribution_strategy", None)


# =====================================================================
# DownpourParameterServerStrategy (strategies/downpour/)
# =====================================================================
# A Downpour worker runs Keras' training step itself, statelessly, on
# fetched tensors (strategies/downpour/worker.py), as Keras' JAX trainer
# does; it needs the same few model and optimizer internals that trainer
# reads. The ps applies the optimizer per shard (ps.py), which needs its
# weight-decay rule.

PRIVATE_NAMES.update({
    "_call_has_training_arg": (
        "whether the model's `call` takes `training`, so the worker's "
        "stateless_call passes training=True only when it does"
    ),
    "_losses_override": (
        "the layer losses a stateless call returned, which "
        "stateless_compute_loss adds to the compiled loss (as the JAX "
        "trainer sets them)"
    ),
    "_loss_tracker": (
        "the model's 'loss' metric, updated by the worker as Keras' "
        "train_step updates it"
    ),
    "_clip_gradients": (
        "the optimizer's clipnorm/clipvalue/global_clipnorm, applied by the "
        "worker before it accumulates a gradient"
    ),
    "_use_weight_decay": (
        "whether the optimizer decays a variable (exclude_from_weight_decay), "
        "asked by the ps per shard"
    ),
})


def call_has_training_arg(model) -> bool:
    """Returns whether `model.call` takes a `training` argument."""
    return model._call_has_training_arg


@contextlib.contextmanager
def override_layer_losses(model, losses):
    """Makes `model.stateless_compute_loss` add `losses` (the layer losses
    of a stateless call) in this block; does nothing if `losses` is empty."""
    if not losses:
        yield
        return
    model._losses_override.clear()
    model._losses_override = losses
    try:
        yield
    finally:
        model._losses_override.clear()


def loss_tracker(model):
    """Returns the model's `"loss"` metric (a `keras.metrics.Mean`)."""
    return model._loss_tracker


def clip_gradients(optimizer, grads):
    """Returns `grads` clipped as `optimizer`'s clip options say."""
    return optimizer._clip_gradients(grads)


def uses_weight_decay(optimizer, variable) -> bool:
    """Returns whether `optimizer` applies weight decay to `variable`."""
    return optimizer._use_weight_decay(variable)


# (end of the DownpourParameterServerStrategy section)
