"""The worker side of Downpour: one closure = a few steps of one worker.

A closure runs on whichever worker the `ClusterCoordinator` gives it, on
that worker's data shard:

1. fetch the parameters (and non-trainable state) into local tensors;
2. for each of its steps: compute the gradient of the model's compiled loss
   with `model.stateless_call` on the local tensors, add it to the
   accumulated gradient, update the local copy with a plain SGD step at the
   optimizer's learning rate (DistBelief's local step; skipped when the next
   step re-fetches anyway);
3. push the accumulated gradient every `n_push` steps and at its end, with
   the metric updates of those steps and the non-trainable state they
   changed (e.g. batch-normalization statistics; the last push applied
   wins): the applier commits them with the push, if it is not a
   duplicate, so a re-run closure does not count twice (`ps.py`);
4. re-fetch every `n_fetch` steps, once its last push is applied (so the
   fetch sees it).

A push costs the worker no wait for its apply unless such a fetch follows,
or with `"sync"`, whose next round must see the update
(`applier.Applier.send`). So with `n_fetch = n_push = 1` and one step per
closure (the defaults), a step waits for nothing of the applier.

Keras internals used (Keras 3.15, the same the JAX trainer uses), through
the Downpour section of `tf_decentral/_keras_private.py`: whether `call`
takes `training`, the layer losses of a stateless call, the "loss" metric
and the optimizer's gradient clipping.

`check_model` says why a model cannot be trained this way (a custom
`train_step`, an optimizer made outside the strategy's scope, ...).
"""

import keras
import tensorflow as tf

from tf_decentral import _keras_private
from tf_decentral.strategies import _keras_hooks


def _add(accumulated, grads):
    return [
        g if a is None else (a if g is None else a + g)
        for a, g in zip(accumulated, grads)
    ]


def _batch_size(x):
    first = next(t for t in tf.nest.flatten(x) if t is not None)
    return tf.shape(first)[0]


class ClosureBuilder:
    """Builds (and caches) the closure functions for one model.

    Args:
        model: The compiled Keras model.
        state: Its `ParameterServerState`.
        n_fetch: Steps between fetches.
        n_push: Steps between pushes.
        max_pushes: Pushes of the longest closure (spacing of push ids).
    """

    def __init__(self, model, state, *, n_fetch, n_push, max_pushes):
        self.model = model
        self.state = state
        self.n_fetch = n_fetch
        self.n_push = n_push
        self.max_pushes = max_pushes
        self._functions = {}

    def function(self, num_steps: int):
        """Returns the `tf.function(iterator, closure_id)` of `num_steps`."""
        if num_steps not in self._functions:
            self._functions[num_steps] = tf.function(
                lambda iterator, closure_id: self._closure(
                    iterator, closure_id, num_steps
                )
            )
        return self._functions[num_steps]

    def pushes(self, num_steps: int) -> int:
        """The pushes of a closure of `num_steps` steps (one every `n_push`
        steps and one at its end)."""
        return -(-num_steps // self.n_push)

    def _step(self, params, state, metrics, data):
        """One stateless training step; returns grads, state, metrics."""
        model = self.model
        optimizer = model.optimizer
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        kwargs = {}
        if _keras_private.call_has_training_arg(model):
            kwargs["training"] = True
        with tf.GradientTape() as tape:
            tape.watch(params)
            y_pred, state, losses = model.stateless_call(
                params, state, x, return_losses=True, **kwargs
            )
            with _keras_private.override_layer_losses(model, losses):
                loss, (_, state, metrics) = model.stateless_compute_loss(
                    params,
                    state,
                    metrics,
                    x=x,
                    y=y,
                    y_pred=y_pred,
                    sample_weight=sample_weight,
                    training=True,
                )
            scaled_loss = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, params)
        grads = [None if g is None else tf.convert_to_tensor(g) for g in grads]
        if optimizer.loss_scale_factor is not None:
            grads = [
                None if g is None else g / optimizer.loss_scale_factor
                for g in grads
            ]
        grads = _keras_private.clip_gradients(optimizer, grads)
        mapping = list(zip(model.metrics_variables, metrics))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            _keras_private.loss_tracker(model).update_state(
                loss, sample_weight=_batch_size(x)
            )
            model.compute_metrics(x, y, y_pred, sample_weight)
        updated = []
        for variable, before in zip(model.metrics_variables, metrics):
            after = scope.get_current_value(variable)
            updated.append(before if after is None else after)
        return grads, state, updated

    def _closure(self, iterator, closure_id, num_steps):
        model = self.model
        ps = self.state
        trainable = model.trainable_variables
        non_trainable = model.non_trainable_variables
        values, clock = ps.fetch(trainable + non_trainable)
        params = values[: len(trainable)]
        fetched_state = values[len(trainable) :]
        state = list(fetched_state)
        rate = ps.learning_rate()
        zeros = [tf.zeros(v.shape, v.dtype) for v in model.metrics_variables]
        metrics = zeros
        accumulated = [None] * len(params)
        pushed = []  # What each push returned (see `ps.push`).
        for step in range(num_steps):
            data = next(iterator)
            grads, state, metrics = self._step(params, state, metrics, data)
            accumulated = _add(accumulated, grads)
            last = step == num_steps - 1
            if (step + 1) % self.n_push == 0 or last:
                push_id = closure_id * self.max_pushes + len(pushed)
                extras = self._extras(metrics, fetched_state, state)
                # Wait for the apply only if a fetch follows, which must
                # see it, or for S-PSGD's round.
                wait = ps.protocol == "sync" or (
                    not last and (step + 1) % self.n_fetch == 0
                )
                pushed.append(
                    ps.push(accumulated, clock, push_id, extras, wait)
                )
                accumulated = [None] * len(params)
                metrics = zeros
            if last:
                break
            if (step + 1) % self.n_fetch == 0:
                with tf.control_dependencies(tf.nest.flatten(pushed[-1:])):
                    params, clock = ps.fetch(trainable)
                    rate = ps.learning_rate()
            else:
                params = [
                    p if g is None else p - tf.cast(rate, p.dtype) * g
                    for p, g in zip(params, grads)
                ]
        # One scalar out, once every push is sent (or applied, "sync"). The
        # coordinator copies a closure's output to the chief before it
        # counts the closure finished, and only that copy waits for the
        # remote function to end: with no output a closure counts as
        # finished once sent, and a worker killed while running it is seen
        # too late (its closure is not re-run; measured: the chief's `fit`
        # failed in 1 of 3 killed-worker runs). The chief itself reads the
        # pushes' records from the applier, in bulk.
        with tf.control_dependencies(tf.nest.flatten(pushed)):
            return tf.identity(closure_id)

    def _extras(self, metrics, fetched_state, state):
        """What a push carries besides its gradient (`Applier.send`): the
        metric updates of its steps, and the non-trainable state its steps
        changed (e.g. batch-normalization statistics; the last push applied
        wins)."""
        model = self.model
        extras = [
            (variable, delta, "add")
            for variable, delta in zip(model.metrics_variables, metrics)
        ]
        for variable, before, after in zip(
            model.non_trainable_variables, fetched_state, state
        ):
            if after is not before:
                extras.append((variable, after, "set"))
        return extras


def check_model(model, extended) -> None:
    """Raises a `ValueError` if the worker cannot train `model`.

    The worker runs the compiled loss, metrics and optimizer itself,
    statelessly (not the model's `train_step`), and the ps tasks run the
    optimizer on variables placed by the strategy whose extended is
    `extended`.
    """
    cls = type(model)
    if _keras_hooks.overrides_train_step(model):
        raise ValueError(
            "DownpourParameterServerStrategy runs the compiled loss, metrics "
            "and optimizer itself, statelessly on the workers, so it cannot "
            f"run a custom `train_step`. Received: {cls.__name__} overrides "
            "`train_step`. Remove the override; custom loss logic can go in "
            "`compute_loss`, which Downpour calls."
        )
    optimizer = model.optimizer
    if optimizer is None:
        raise ValueError(
            "The model must be compiled with an optimizer. Received: "
            "optimizer=None"
        )
    if type(optimizer).__name__ == "LossScaleOptimizer":
        raise ValueError(
            "DownpourParameterServerStrategy does not support "
            "`LossScaleOptimizer` (mixed float16). Received: "
            f"optimizer={optimizer.name}"
        )
    if optimizer.gradient_accumulation_steps:
        raise ValueError(
            "The optimizer's `gradient_accumulation_steps` is not supported; "
            "use the strategy's `n_push` instead. Received: "
            "gradient_accumulation_steps="
            f"{optimizer.gradient_accumulation_steps}"
        )
    if optimizer.use_ema:
        raise ValueError(
            "The optimizer's `use_ema=True` is not supported by "
            "DownpourParameterServerStrategy. Received: use_ema=True"
        )
    strategy = _keras_private.optimizer_strategy(optimizer)
    if getattr(strategy, "extended", None) is not extended:
        raise ValueError(
            "The optimizer must be created inside `strategy.scope()` (pass "
            "it, or its name, to `compile` inside the scope) so that its "
            "variables live beside the parameters on the ps tasks."
        )
