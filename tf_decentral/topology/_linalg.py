"""Matrix math behind `spectral_gap` and `Topology` validation (private).

Kept apart from `spectral.py` so that `base.py` can use it while the public
`spectral_gap` still accepts a `Topology`.
"""

import functools

import numpy as np

# A disagreement norm at or below this is float round-off of an exact average
# (for example the product of the one-peer exponential rounds); it is taken as
# 0 so that the per-round root in `table_gap` does not amplify the noise.
_ZERO_NORM = 1e-12
# A spectral gap at or below this is float round-off of 0: the norm of a
# matrix that does not mix (two components, a pure swap) can come out a few
# ulps below 1 (seen: a gap of 1.11e-16 on a fresh venv's BLAS).
_ROUND_OFF = 1e-12


def period_product(table: np.ndarray) -> np.ndarray:
    """Returns `W_{p-1} @ ... @ W_1 @ W_0` for a table of shape `(p, n, n)`."""
    return functools.reduce(lambda acc, w: w @ acc, table[1:], table[0])


def disagreement_norm(matrix: np.ndarray) -> float:
    """Returns `||matrix - J||_2` with `J = 11^T / n`, snapped to 0 if tiny."""
    num_nodes = matrix.shape[0]
    norm = float(np.linalg.norm(matrix - 1.0 / num_nodes, ord=2))
    return 0.0 if norm <= _ZERO_NORM else norm


def table_gap(table: np.ndarray) -> float:
    """Returns the per-round spectral gap of a table of shape `(p, n, n)`.

    That is `1 - ||W_{p-1} ... W_0 - J||_2 ** (1 / p)`, clamped to `[0, 1]`;
    for `p = 1` it is `1 - ||W - J||_2`; a gap at or below `_ROUND_OFF` is
    0.
    """
    norm = disagreement_norm(period_product(table))
    gap = 1.0 - norm ** (1.0 / table.shape[0])
    return 0.0 if gap <= _ROUND_OFF else gap
