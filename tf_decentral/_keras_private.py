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
}
"""Patch name -> (Keras class, method) that `_keras_hooks.PATCHES` wraps."""


def model_strategy(model):
    """The `tf.distribute` strategy `model` was built under, or None."""
    return getattr(model, "_distribute_strategy", None)


def optimizer_strategy(optimizer):
    """The `tf.distribute` strategy `optimizer` was created under."""
    return optimizer._distribution_strategy


# =====================================================================
# DownpourParameterServerStrategy (strategies/downpour/)
# =====================================================================

PRIVATE_NAMES.update({})

# (end of the DownpourParameterServerStrategy section)
