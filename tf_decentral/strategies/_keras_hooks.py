"""The Keras-side hooks: how a strategy takes over Keras 3's gradient path.

Keras 3.15's TensorFlow optimizer (`TFOptimizer`, a private class) applies
gradients under a `tf.distribute` strategy in two steps:

1. `_all_reduce_sum_gradients` (replica context): one batched
   `ReplicaContext.all_reduce(SUM, grads)`. Keras divided every loss by
   `num_replicas_in_sync`, so the sum is the global mean gradient.
2. `_distributed_tf_update_step` (cross-replica context, inside
   `merge_call`): `extended.update(var, update_step, args=(grad, lr))` for
   each variable.

A strategy whose `extended` is an `OptimizerHooks` takes over both: it may
keep gradients local (gossip) and act on all variables of a step at once
before and after the optimizer's update (one fused mixing per step instead of
one per variable). For any other strategy the original methods run
unchanged. Patching these two methods, rather than reinterpreting every
replica-context all-reduce, keeps other all-reduces (synchronized batch
normalization, user code) real all-reduces.

The patch is installed once, when a strategy that needs it is created, and
`hook_counts` records every time a hook fires so tests can prove the hooks
are live on the installed Keras.
"""

import collections
import threading

import keras
import tensorflow as tf

# Private Keras modules: the TensorFlow backend's optimizer base class
# `TFOptimizer`, whose `_all_reduce_sum_gradients` and
# `_distributed_tf_update_step` we wrap, and its trainer, whose
# `make_train_function` we wrap to explain communication failures.
from keras.src.backend.tensorflow import optimizer as _keras_tf_optimizer
from keras.src.backend.tensorflow import trainer as _keras_tf_trainer

_HOOKED_METHODS = ("_all_reduce_sum_gradients", "_distributed_tf_update_step")
_lock = threading.Lock()
_installed = False

hook_counts = collections.Counter()


class OptimizerHooks:
    """Mixin for `StrategyExtended` classes that own the gradient path."""

    def keras_reduce_gradients(self, optimizer, grads_and_vars):
        """Replaces Keras' gradient all-reduce; runs in replica context.

        Args:
            optimizer: The Keras optimizer applying the gradients.
            grads_and_vars: List of `(gradient or None, tf.Variable)`. The
                gradients are of a loss divided by `num_replicas_in_sync`.

        Returns:
            The list of `(gradient, variable)` that the update step receives.
        """
        raise NotImplementedError

    def keras_apply_gradients(
        self, optimizer, grads_and_vars, learning_rate, apply_fn
    ):
        """Replaces the cross-replica update; must call `apply_fn()` once."""
        raise NotImplementedError

    def explain_communication_error(self, error):
        """Returns a clearer message for `error` raised by a train step.

        Returns None to let the original error through unchanged.
        """
        del error
        return None


_COMMUNICATION_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
    tf.errors.InternalError,
)


def _hooks_of(strategy):
    extended = getattr(strategy, "extended", None)
    return extended if isinstance(extended, OptimizerHooks) else None


def install():
    """Installs the optimizer hooks on Keras' `TFOptimizer` (idempotent).

    Raises:
        RuntimeError: If the installed Keras no longer has the methods the
            hooks wrap (a Keras upgrade changed the gradient path).
    """
    global _installed
    with _lock:
        if _installed:
            return
        cls = _keras_tf_optimizer.TFOptimizer
        missing = [
            m for m in _HOOKED_METHODS if not callable(getattr(cls, m, None))
        ]
        if missing:
            raise RuntimeError(
                "tf_decentral cannot hook this Keras version's gradient path: "
                f"`TFOptimizer` has no {missing}. Received: "
                f"keras=={keras.__version__}. tf_decentral supports "
                "keras==3.15.*."
            )
        original_reduce = cls._all_reduce_sum_gradients
        original_update = cls._distributed_tf_update_step

        def _all_reduce_sum_gradients(self, grads_and_vars):
            hooks = None
            if tf.distribute.in_cross_replica_context() is False:
                hooks = _hooks_of(tf.distribute.get_strategy())
            if hooks is None:
                return original_reduce(self, grads_and_vars)
            hook_counts["reduce_gradients"] += 1
            return hooks.keras_reduce_gradients(self, list(grads_and_vars))

        def _distributed_tf_update_step(
            self, distribution, grads_and_vars, learning_rate
        ):
            hooks = _hooks_of(distribution)
            if hooks is None:
                return original_update(
                    self, distribution, grads_and_vars, learning_rate
                )
            hook_counts["apply_gradients"] += 1
            grads_and_vars = list(grads_and_vars)

            def apply_fn():
                return original_update(
                    self, distribution, grads_and_vars, learning_rate
                )

            return hooks.keras_apply_gradients(
                self, grads_and_vars, learning_rate, apply_fn
            )

        trainer_cls = _keras_tf_trainer.TensorFlowTrainer
        original_make_train_function = trainer_cls.make_train_function

        def make_train_function(self, force=False):
            hooks = _hooks_of(getattr(self, "_distribute_strategy", None))
            function = original_make_train_function(self, force=force)
            if hooks is None or getattr(
                self.train_function, "_tfd_explained", False
            ):
                return function
            hook_counts["make_train_function"] += 1
            train_function = self.train_function

            def explained(*args, **kwargs):
                try:
                    return train_function(*args, **kwargs)
                except _COMMUNICATION_ERRORS as e:
                    message = hooks.explain_communication_error(e)
                    if message is None:
                        raise
                    raise type(e)(e.node_def, e.op, message) from e

            explained._tfd_explained = True
            self.train_function = explained
            return function if function is None else explained

        cls._all_reduce_sum_gradients = _all_reduce_sum_gradients
        cls._distributed_tf_update_step = _distributed_tf_update_step
        trainer_cls.make_train_function = make_train_function
        _installed = True
