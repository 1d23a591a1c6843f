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

PRIVATE_NAMES = {
    "keras.src.backend.tensorflow.optimizer": (
        "the TensorFlow backend's optimizer base class `TFOptimizer`, whose "
        "gradient all-reduce and cross-replica update the strategies take over"
    ),
    "keras.src.backend.tensorflow.trainer": (
        "the TensorFlow backend's `TensorFlowTrainer`, whose fit, train "
        "function, epoch-end logs and metric reset the strategies hook"
    ),
}

TFOptimizer = _keras_tf_optimizer.TFOptimizer
TensorFlowTrainer = _keras_tf_trainer.TensorFlowTrainer


# =====================================================================
# DownpourParameterServerStrategy (strategies/downpour/)
# =====================================================================

PRIVATE_NAMES.update({})

# (end of the DownpourParameterServerStrategy section)
