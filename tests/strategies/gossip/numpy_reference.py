"""The NumPy reference of the gossip update rules, for a linear model.

Shared by the single-host and the multi-worker tests, which shard the data
differently but take the same step.
"""

import numpy as np


def mse_grads(x, y, w, b):
    """Gradients of mean((x w + b - y)^2) for a Dense(1) layer."""
    err = x @ w + b - y
    return 2 * x.T @ err / len(x), 2 * err.sum(0) / len(x)


def gossip_step(update, mix, w, b, grads, lr):
    """One step of every copy: `w`, `b` stack the copies on axis 0, `grads`
    holds each copy's `(grad_w, grad_b)` and `mix` is the round's `W_t`.

    `"dpsgd"`: `x_i <- sum_j W_ij x_j - lr g_i`; `"atc"`:
    `x_i <- sum_j W_ij (x_j - lr g_j)`.
    """
    gw = np.stack([g[0] for g in grads])
    gb = np.stack([g[1] for g in grads])
    if update == "dpsgd":
        return np.einsum("ij,jkl->ikl", mix, w) - lr * gw, mix @ b - lr * gb
    return np.einsum("ij,jkl->ikl", mix, w - lr * gw), mix @ (b - lr * gb)
