"""Spectral gap and doubly-stochastic check of mixing matrices.

For a doubly stochastic `W`, the all-ones vector is a fixed point of both `W`
and `W^T`, so gossip preserves the average `x_bar` and acts on the
disagreement `x - x_bar 1` as `W - J`, with `J = 11^T / n` the exact averaging
matrix. One round therefore shrinks the disagreement by at least the factor
`||W - J||_2` (spectral norm, the largest singular value of `W - J`, which is
the second largest singular value of `W`). The **spectral gap**
`1 - ||W - J||_2` is in `[0, 1]`: 1 means one round averages exactly, 0 means
some disagreement never decays (a disconnected graph). For a symmetric `W` it
equals `1 - |lambda_2|`, with `lambda_2` the eigenvalue of second largest
modulus.
"""

import numpy as np
import numpy.typing as npt

from tf_decentral.topology import _checks
from tf_decentral.topology import _linalg
from tf_decentral.topology import base


def spectral_gap(w: npt.ArrayLike | base.Topology) -> float:
    """Returns the spectral gap `1 - ||W - J||_2` of a mixing matrix.

    For a matrix `W` of shape `(n, n)` this is `1 - ||W - J||_2`, with
    `J = 11^T / n`; it assumes `W` is doubly stochastic. For a single node it
    is 1.

    For a time-varying `Topology` of period `p` no single round need contract
    the disagreement (a one-peer round leaves most pairs apart), but one
    period does, by `||W_{p-1} ... W_1 W_0 - J||_2`. The gap is expressed per
    round, as `1 - ||W_{p-1} ... W_0 - J||_2 ** (1 / p)`: the disagreement
    then shrinks on average by the factor `1 - gap` per round, so static and
    time-varying topologies compare on the same scale. A norm at or below
    `1e-12` counts as 0 (exact averaging), and float round-off below 0 is
    clamped to 0.

    Args:
        w: A mixing matrix, array-like of shape `(n, n)`, or a `Topology`.

    Returns:
        The spectral gap, a float in `[0, 1]`.

    Raises:
        TypeError: If `w` is not numeric.
        ValueError: If `w` is not a non-empty square matrix of finite numbers.

    Example:
        >>> from tf_decentral import topology
        >>> round(topology.spectral_gap(topology.ring(4)), 4)
        0.6667
        >>> topology.spectral_gap(topology.complete(5))
        1.0
        >>> topology.spectral_gap(topology.one_peer_exponential(8))
        1.0
        >>> topology.spectral_gap([[1.0, 0.0], [0.0, 1.0]])
        0.0
    """
    if isinstance(w, base.Topology):
        return w.spectral_gap()
    matrix = _checks.as_float_array(w, "w")
    if (
        matrix.ndim != 2
        or matrix.shape[0] != matrix.shape[1]
        or not matrix.size
    ):
        raise ValueError(
            "`w` must be a non-empty square matrix of shape (n, n); for a "
            "stack of matrices (period, n, n) use "
            "`Topology(w).spectral_gap()`. "
            f"Received: w with shape {matrix.shape}"
        )
    if not np.all(np.isfinite(matrix)):
        raise ValueError(
            "`w` must be finite. Received: w with NaN or infinite entries"
        )
    return _linalg.table_gap(matrix[np.newaxis])


def is_doubly_stochastic(
    w: npt.ArrayLike | base.Topology, atol: float = 1e-6
) -> bool:
    """Returns whether `w` is a doubly stochastic matrix (or stack of them).

    Doubly stochastic means every entry is `>= 0` and every row and every
    column sums to 1 (within `atol`). A `Topology` always is. Anything that is
    not a non-empty, finite, square matrix of shape `(n, n)` or a stack of them
    of shape `(period, n, n)` is not.

    Args:
        w: Array-like of shape `(n, n)` or `(period, n, n)`, or a `Topology`.
        atol: Absolute tolerance on the row and column sums, `>= 0`.

    Returns:
        `True` if `w` is doubly stochastic.

    Raises:
        ValueError: If `atol` is negative or not finite.

    Example:
        >>> from tf_decentral import topology
        >>> topology.is_doubly_stochastic(topology.ring(5).weights())
        True
        >>> topology.is_doubly_stochastic([[0.5, 0.5], [0.0, 1.0]])
        False
    """
    if not np.isfinite(atol) or atol < 0:
        raise ValueError(
            f"`atol` must be a finite number >= 0. Received: atol={atol!r}"
        )
    if isinstance(w, base.Topology):
        w = w.weights_table()
    try:
        table = _checks.as_float_array(w, "w")
    except TypeError:
        return False
    if (
        table.ndim not in (2, 3)
        or table.shape[-1] != table.shape[-2]
        or not table.size
        or not np.all(np.isfinite(table))
    ):
        return False
    return bool(
        np.all(table >= 0)
        and np.allclose(table.sum(axis=-1), 1.0, rtol=0.0, atol=atol)
        and np.allclose(table.sum(axis=-2), 1.0, rtol=0.0, atol=atol)
    )
