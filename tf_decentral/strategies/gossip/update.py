"""The gossip update rules, as Keras optimizer hooks (see `_keras_hooks`).

Shared by the single-host and the multi-worker extended:

- `"dpsgd"` (Lian et al. 2017, Algorithm 1):
  `x_i <- sum_j W_ij x_j - lr * g_i(x_i)`: mix, then apply the gradient
  computed at the copy before mixing.
- `"atc"` (adapt-then-combine): `x_i <- sum_j W_ij (x_j - lr * g_j(x_j))`:
  every copy first takes its own optimizer step, then the results are mixed.
"""

import tensorflow as tf

from tf_decentral.strategies import _keras_hooks
from tf_decentral.strategies.gossip.variables import GossipVariable

UPDATE_RULES = ("dpsgd", "atc")


def scale_gradients(grads_and_vars, scale):
    """Returns `(gradient * scale, variable)` pairs; None and sparse kept.

    Example:
        >>> import tensorflow as tf
        >>> v = tf.Variable(1.0)
        >>> [(g.numpy(), w is v) for g, w in scale_gradients(
        ...     [(tf.constant(0.5), v)], 4)]
        [(np.float32(2.0), True)]
    """
    out = []
    for grad, var in grads_and_vars:
        if grad is None:
            out.append((grad, var))
        elif isinstance(grad, tf.IndexedSlices):
            values = grad.values * tf.cast(scale, grad.values.dtype)
            out.append(
                (tf.IndexedSlices(values, grad.indices, grad.dense_shape), var)
            )
        else:
            out.append((grad * tf.cast(scale, grad.dtype), var))
    return out


class GossipOptimizerHooks(_keras_hooks.OptimizerHooks):
    """The update rule shared by single-host and multi-worker gossip.

    Subclasses set `update_rule` (one of `UPDATE_RULES`) and provide
    `mix(variables, step)` and `keras_reduce_gradients`.
    """

    def keras_apply_gradients(
        self, optimizer, grads_and_vars, learning_rate, apply_fn
    ):
        """Mixes updated variables before (dpsgd) or after (atc) the step."""
        variables = [
            v
            for g, v in grads_and_vars
            if g is not None and isinstance(v, GossipVariable)
        ]
        step = optimizer.iterations
        if self.update_rule == "dpsgd":
            self.mix(variables, step=step)
        result = apply_fn()
        if self.update_rule == "atc":
            self.mix(variables, step=step)
        return result
