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

A strategy whose `extended` is a `TrainFunctionHooks` (every
`OptimizerHooks` is one; `AllReduceStrategy` is one without taking over the
gradients) hooks `fit`'s loop: `TensorFlowTrainer.fit` runs inside its
`keras_fit_context` (AsyncGossipStrategy tells its peers when a worker
trains), `make_train_function` hands Keras' train function to its
`keras_wrap_train_function` (AllReduceStrategy traces Keras' step in a
context that keeps the step's logs on the worker), and communication errors
of a step are re-raised with its `explain_communication_error`.

A strategy that is a `FitDriver` (DownpourParameterServerStrategy) replaces
Keras' whole training step instead: `fit` calls `make_train_function`, then
`train_function(iterator)` once per `steps_per_execution` batches. For such a
strategy four more guarded patches apply, and do nothing for any other:

* `TensorFlowTrainer.make_train_function` returns the strategy's own train
  function (`FitDriver.keras_train_function`).
* `TensorFlowTrainer._get_metrics_result_or_logs`, which `fit` calls once at
  the end of every epoch before the epoch's callbacks, lets the strategy
  finish the epoch's asynchronous work first (`FitDriver.keras_epoch_end`),
  so that checkpoints and epoch logs see every committed update.
* `TensorFlowTrainer.reset_metrics`, which `fit`, `evaluate` and `predict`
  call eagerly at the start of every epoch or run, runs in the strategy's
  error context (`FitDriver.keras_error_context`): the metrics live on
  remote tasks, and a task lost between two epochs fails there first.
* `TFOptimizer.__init__`: an optimizer created in the strategy's scope is
  built on `FitDriver.keras_optimizer_variables(variables)` (e.g. the row
  shards of a sharded variable) whichever code calls its `build`.

On a cluster, checkpoints have one writer: `BackupAndRestore`'s restore,
write and clean-up and `ModelCheckpoint`'s write ask the strategy's
`TrainFunctionHooks` whether this task writes where the user asked (the
others write into a scratch directory), how to write (gossip: the consensus
model), whether they read it (AsyncGossip: only the writer does) and what
every worker resumes from (the chief's backup).

`PATCHES` is the table of these patches: one small named wrapper each,
whose target (a class and method named in `tf_decentral/_keras_private.py`,
the inventory of private Keras names) is checked to exist before anything is
patched. `install()` applies them once, when a strategy that needs them is
created, and `hook_counts` records every time a hook fires so tests can
prove the hooks are live on the installed Keras.
"""

import collections
import contextlib
import dataclasses
import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Callable

import keras
import tensorflow as tf

from tf_decentral import _keras_private
from tf_decentral.strategies import _collective

_lock = threading.Lock()
_installed = False

hook_counts = collections.Counter()
"""Hook name -> how many times it fired in this process."""


class TrainFunctionHooks:
    """Mixin for `StrategyExtended` classes that hook Keras' `fit` loop."""

    def keras_wrap_train_function(self, model, train_function):
        """Returns the function `fit` calls per step instead of Keras' one.

        The default keeps Keras' `train_function`; a strategy may run its
        own work around each call (asynchronous gossip exchanges after it,
        or a context that Keras' step is traced in).
        """
        del model
        return train_function

    def keras_fit_context(self, model):
        """Returns a context manager that `fit` runs in (entered before its
        first step, exited when it returns or raises)."""
        del model
        return contextlib.nullcontext()

    def explain_communication_error(self, error):
        """Returns a clearer message for `error` raised by a train step.

        Returns None to let the original error through unchanged.
        """
        del error
        return None

    # Checkpoints (BackupAndRestore, ModelCheckpoint) on a cluster.

    def keras_checkpoint_writer(self) -> bool:
        """Whether this task writes checkpoints where the user asked.

        On a cluster of synchronous workers one task (the chief) writes;
        the others write into a temporary directory that is then removed.
        """
        return True

    def keras_backup_write(self, model, save):
        """Runs `save()`, BackupAndRestore's write of `model`'s backup."""
        del model
        return save()

    def keras_backup_restored(self, model):
        """Called on every task after BackupAndRestore's restore, e.g. to
        make every worker start from the writer's state."""
        del model

    def keras_backup_read_by_writer_only(self) -> bool:
        """Whether non-writers read an empty scratch directory, not the
        backup (they get the writer's state in `keras_backup_restored`)."""
        return False


class OptimizerHooks(TrainFunctionHooks):
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


class FitDriver:
    """Mixin for strategies that run Keras' training step themselves."""

    def keras_train_function(self, model):
        """Returns the callable `fit` uses as `model.train_function`."""
        raise NotImplementedError

    def keras_epoch_end(self, model, logs):
        """Finishes `fit`'s epoch; returns the epoch's logs.

        Returns None to let Keras compute the logs as usual (e.g. when
        `evaluate`, not `fit`, asks).
        """
        del model, logs
        return None

    def keras_optimizer_variables(self, variables):
        """Returns the variables an optimizer is built on, given the model's."""
        return variables

    def keras_error_context(self):
        """Returns a context manager that explains communication errors."""
        return contextlib.nullcontext()


def overrides_train_step(model) -> bool:
    """Returns whether `model`'s class replaces Keras' TF `train_step`."""
    return (
        type(model).train_step
        is not _keras_private.TensorFlowTrainer.train_step
    )


def _hooks_of(strategy, protocol=TrainFunctionHooks):
    extended = getattr(strategy, "extended", None)
    return extended if isinstance(extended, protocol) else None


def _driver_of(strategy):
    return _hooks_of(strategy, FitDriver)


# The patches. Each `wrap_*` takes the original method and returns its
# replacement; every replacement calls the original unchanged unless the
# strategy in charge is one of ours that asks for the hook.


def wrap_reduce_gradients(original):
    """Keras' gradient all-reduce -> `OptimizerHooks.keras_reduce_gradients`."""

    def reduce_gradients(self, grads_and_vars):
        hooks = None
        if tf.distribute.in_cross_replica_context() is False:
            hooks = _hooks_of(tf.distribute.get_strategy(), OptimizerHooks)
        if hooks is None:
            return original(self, grads_and_vars)
        hook_counts["reduce_gradients"] += 1
        return hooks.keras_reduce_gradients(self, list(grads_and_vars))

    return reduce_gradients


def wrap_apply_gradients(original):
    """Keras' cross-replica update -> `OptimizerHooks.keras_apply_gradients`."""

    def apply_gradients(self, distribution, grads_and_vars, learning_rate):
        hooks = _hooks_of(distribution, OptimizerHooks)
        if hooks is None:
            return original(self, distribution, grads_and_vars, learning_rate)
        hook_counts["apply_gradients"] += 1
        grads_and_vars = list(grads_and_vars)

        def apply_fn():
            return original(self, distribution, grads_and_vars, learning_rate)

        return hooks.keras_apply_gradients(
            self, grads_and_vars, learning_rate, apply_fn
        )

    return apply_gradients


def wrap_optimizer_init(original):
    """An optimizer of a `FitDriver` is built on the driver's variables."""

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        driver = _driver_of(_keras_private.optimizer_strategy(self))
        if driver is None:
            return
        hook_counts["driver_optimizer"] += 1
        class_build = type(self).build

        def build(variables):
            hook_counts["driver_optimizer_build"] += 1
            variables = driver.keras_optimizer_variables(list(variables))
            return class_build(self, variables)

        # An instance attribute, so that every caller of `build` (fit's
        # symbolic build, BackupAndRestore, loading) gets the variables the
        # strategy chose; `object.__setattr__` keeps it out of Keras'
        # variable tracking.
        object.__setattr__(self, "build", build)

    return __init__


def wrap_fit(original):
    """`fit` runs inside `OptimizerHooks.keras_fit_context`."""

    @functools.wraps(original)
    def fit(self, *args, **kwargs):
        hooks = _hooks_of(_keras_private.model_strategy(self))
        if hooks is None:
            return original(self, *args, **kwargs)
        hook_counts["fit_context"] += 1
        with hooks.keras_fit_context(self):
            return original(self, *args, **kwargs)

    return fit


def wrap_make_train_function(original):
    """A `FitDriver`'s train function, or Keras' with explained errors."""

    def make_train_function(self, force=False):
        strategy = _keras_private.model_strategy(self)
        driver = _driver_of(strategy)
        if driver is not None:
            if self.train_function is None or force:
                hook_counts["driver_train_function"] += 1
                self.train_function = driver.keras_train_function(self)
            return self.train_function
        hooks = _hooks_of(strategy)
        function = original(self, force=force)
        if hooks is None or getattr(self.train_function, "_tfd_hooked", False):
            return function
        hook_counts["make_train_function"] += 1
        self.train_function = _explained(
            hooks, hooks.keras_wrap_train_function(self, self.train_function)
        )
        return function if function is None else self.train_function

    return make_train_function


def _explained(hooks, train_function):
    """`train_function`, re-raising communication errors with the hooks'
    explanation."""

    @functools.wraps(train_function)
    def explained(*args, **kwargs):
        try:
            return train_function(*args, **kwargs)
        except _collective.COMMUNICATION_ERRORS as e:
            message = hooks.explain_communication_error(e)
            if message is None:
                raise
            raise type(e)(e.node_def, e.op, message) from e

    explained._tfd_hooked = True
    return explained


def wrap_epoch_logs(original):
    """`fit`'s end-of-epoch logs wait for a `FitDriver`'s epoch to end."""

    def epoch_logs(self, logs):
        driver = _driver_of(_keras_private.model_strategy(self))
        if driver is not None:
            epoch_logs = driver.keras_epoch_end(self, logs)
            if epoch_logs is not None:
                hook_counts["driver_epoch_end"] += 1
                return epoch_logs
        return original(self, logs)

    return epoch_logs


def wrap_reset_metrics(original):
    """`reset_metrics` runs in a `FitDriver`'s error context."""

    def reset_metrics(self):
        driver = _driver_of(_keras_private.model_strategy(self))
        if driver is None:
            return original(self)
        hook_counts["driver_reset_metrics"] += 1
        with driver.keras_error_context():
            return original(self)

    return reset_metrics


@contextlib.contextmanager
def _scratch_directory(backup=None):
    """Yields a temporary directory, removed after the block; a
    BackupAndRestore `backup` reads and writes its files there meanwhile."""
    directory = tempfile.mkdtemp(prefix="tf_decentral_checkpoint_")
    try:
        with _keras_private.backup_written_to(backup, directory):
            yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def wrap_backup_restore(original):
    """Every task resumes from one state after BackupAndRestore's restore
    (`keras_backup_restored`); non-writers may read a scratch directory."""

    def on_train_begin(self, logs=None):
        hooks = _hooks_of(_keras_private.model_strategy(self.model))
        if hooks is None:
            return original(self, logs)
        skip = hooks.keras_backup_read_by_writer_only()
        if skip and not hooks.keras_checkpoint_writer():
            hook_counts["backup_read_skipped"] += 1
            with _scratch_directory(backup=self):
                result = original(self, logs)
        else:
            result = original(self, logs)
        hook_counts["backup_restored"] += 1
        hooks.keras_backup_restored(self.model)
        return result

    return on_train_begin


def wrap_backup_save(original):
    """Only the checkpoint writer writes the backup where the user asked;
    the others write into a scratch directory (`keras_backup_write`)."""

    def save_model(self):
        hooks = _hooks_of(_keras_private.model_strategy(self.model))
        if hooks is None:
            return original(self)
        if hooks.keras_checkpoint_writer():
            hook_counts["backup_write"] += 1
            return hooks.keras_backup_write(self.model, lambda: original(self))
        hook_counts["backup_scratch"] += 1
        with _scratch_directory(backup=self):
            return hooks.keras_backup_write(self.model, lambda: original(self))

    return save_model


def wrap_backup_cleanup(original):
    """Only the checkpoint writer deletes the backup at the end of `fit`."""

    def on_train_end(self, logs=None):
        hooks = _hooks_of(_keras_private.model_strategy(self.model))
        if hooks is not None and not hooks.keras_checkpoint_writer():
            return None
        return original(self, logs)

    return on_train_end


def wrap_checkpoint_save(original):
    """ModelCheckpoint writes where the user asked on the writer only."""

    def save_model(self, epoch, batch, logs):
        hooks = _hooks_of(_keras_private.model_strategy(self.model))
        if hooks is None or hooks.keras_checkpoint_writer():
            return original(self, epoch, batch, logs)
        hook_counts["checkpoint_scratch"] += 1
        filepath = self.filepath
        with _scratch_directory() as scratch:
            self.filepath = os.path.join(scratch, os.path.basename(filepath))
            try:
                return original(self, epoch, batch, logs)
            finally:
                self.filepath = filepath

    return save_model


@dataclasses.dataclass(frozen=True)
class Patch:
    """One wrapped Keras method.

    Attributes:
        target: Key of `_keras_private.PATCH_TARGETS`: the class and method.
        wrap: Takes the original method, returns its replacement.
    """

    target: str
    wrap: Callable


PATCHES = (
    Patch("optimizer_reduce_gradients", wrap_reduce_gradients),
    Patch("optimizer_apply_gradients", wrap_apply_gradients),
    Patch("optimizer_init", wrap_optimizer_init),
    Patch("trainer_fit", wrap_fit),
    Patch("trainer_make_train_function", wrap_make_train_function),
    Patch("trainer_epoch_logs", wrap_epoch_logs),
    Patch("trainer_reset_metrics", wrap_reset_metrics),
    Patch("backup_restore", wrap_backup_restore),
    Patch("backup_save", wrap_backup_save),
    Patch("backup_cleanup", wrap_backup_cleanup),
    Patch("checkpoint_save", wrap_checkpoint_save),
)


def missing_targets() -> list:
    """Returns the `PATCHES` targets this Keras does not have."""
    missing = []
    for patch in PATCHES:
        owner, method = _keras_private.PATCH_TARGETS[patch.target]
        if not callable(getattr(owner, method, None)):
            missing.append(f"{owner.__name__}.{method}")
    return missing


def install():
    """Applies `PATCHES` to Keras (idempotent).

    Raises:
        RuntimeError: If the installed Keras no longer has a method a patch
            wraps (a Keras upgrade changed the training path); nothing is
            patched then.
    """
    global _installed
    with _lock:
        if _installed:
            return
        missing = missing_targets()
        if missing:
            raise RuntimeError(
                "tf_decentral cannot hook this Keras version's training "
                f"path: it has no {missing}. Received: "
                f"keras=={keras.__version__}. tf_decentral supports "
                "keras==3.15.*."
            )
        for patch in PATCHES:
            owner, method = _keras_private.PATCH_TARGETS[patch.target]
            setattr(owner, method, patch.wrap(getattr(owner, method)))
        _installed = True
