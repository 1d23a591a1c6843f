"""`Topology`: the validated mixing matrices of a gossip network.

Terms used throughout `tf_decentral.topology`:

* **Node**: one model replica (a device or a worker), numbered `0 .. n-1`.
* **Mixing matrix** `W`, of shape `(n, n)`: `W[i, j]` is the weight node `i`
  gives to node `j`'s value, so one **gossip round** is
  `x_i <- sum_j W[i, j] x_j`. (Bluefog indexes the other way round, as
  `[src, dst]`; here `W` is the transpose of Bluefog's.)
* **Doubly stochastic**: every entry is `>= 0` and every row and every column
  sums to 1. Rows summing to 1 make each round a weighted average; columns
  summing to 1 make the round preserve the global average.
* **Neighbors** of `i`: the nodes `j != i` with `W[i, j] > 0`, whose values `i`
  mixes in (`i` receives from them). **Out-neighbors** of `i`: the nodes
  `j != i` with `W[j, i] > 0`, which mix in `i`'s value (`i` sends to them).
* **Time-varying** topology: a periodic sequence of mixing matrices; round
  `t` uses `W_t = weights[t % period]`. A static topology has period 1.
* **Spectral gap**: how fast gossip drives the nodes to consensus; see
  `tf_decentral.topology.spectral_gap`.
"""

import numpy as np
import numpy.typing as npt

from tf_decentral.topology import _checks
from tf_decentral.topology import _linalg

# Tolerance on the row and column sums of a valid mixing matrix.
_SUM_ATOL = 1e-6
# A spectral gap at or below this means the nodes never reach consensus.
_MIN_GAP = 1e-9


def _format_sums(sums: np.ndarray) -> str:
    return np.array2string(sums, precision=8, separator=", ", threshold=16)


def _describe_sums(table: np.ndarray) -> str | None:
    """Returns why `table` is not doubly stochastic, or `None` if it is."""
    row_sums = table.sum(axis=2)
    col_sums = table.sum(axis=1)
    rows_off = ~np.isclose(row_sums, 1.0, rtol=0.0, atol=_SUM_ATOL)
    cols_off = ~np.isclose(col_sums, 1.0, rtol=0.0, atol=_SUM_ATOL)
    bad_steps = np.flatnonzero((rows_off | cols_off).any(axis=1))
    if bad_steps.size == 0:
        return None
    step = int(bad_steps[0])
    rows = np.flatnonzero(rows_off[step]).tolist()
    cols = np.flatnonzero(cols_off[step]).tolist()
    where = f"at step t={step}, " if table.shape[0] > 1 else ""
    return (
        f"{where}row sums {_format_sums(row_sums[step])} (off at rows "
        f"{rows}) and column sums {_format_sums(col_sums[step])} "
        f"(off at columns {cols})"
    )


def _as_weight_table(weights: object) -> tuple[np.ndarray, float]:
    """Validates `weights`; returns a read-only `(p, n, n)` copy and its gap."""
    table = _checks.as_float_array(weights, "weights")
    if table.ndim not in (2, 3):
        raise ValueError(
            "`weights` must have shape (n, n) (static) or (period, n, n) "
            f"(time-varying). Received: weights with shape {table.shape}"
        )
    if table.shape[-1] != table.shape[-2]:
        raise ValueError(
            "`weights` must be square in its last two dimensions. "
            f"Received: weights with shape {table.shape}"
        )
    if table.size == 0:
        raise ValueError(
            "`weights` must describe at least one node and one step. "
            f"Received: weights with shape {table.shape}"
        )
    static = table.ndim == 2
    if static:
        # A copy rather than a view, so that no writable base array remains.
        table = table[np.newaxis].copy()
    if not np.all(np.isfinite(table)):
        raise ValueError(
            "`weights` must be finite. Received: weights with "
            f"{int(np.sum(~np.isfinite(table)))} NaN or infinite entries"
        )
    negative = np.argwhere(table < 0)
    if negative.size:
        index = tuple(negative[0].tolist())
        shown = index[1:] if static else index
        more = (
            f" (and {len(negative) - 1} more negative entries)"
            if len(negative) > 1
            else ""
        )
        raise ValueError(
            "`weights` must be non-negative. Received: "
            f"weights[{', '.join(map(str, shown))}]={float(table[index])}{more}"
        )
    problem = _describe_sums(table)
    if problem is not None:
        raise ValueError(
            "`weights` must be doubly stochastic (every row and every column "
            f"sums to 1, within {_SUM_ATOL}). Received: {problem}"
        )
    gap = _linalg.table_gap(table)
    if gap <= _MIN_GAP:
        over = "" if static else " over one period (product of all steps)"
        raise ValueError(
            "`weights` must describe a mixing graph on which gossip reaches "
            "consensus: connected (else each component keeps its own "
            "average) and not periodic (a pure swap without self-weight "
            "oscillates forever). Received: weights whose spectral "
            f"gap{over} is {gap:.3g}, so gossip would never reach consensus"
        )
    table.setflags(write=False)
    return table, gap


class Topology:
    """The mixing matrices of a static or time-varying gossip network.

    A `Topology` holds either one mixing matrix `W` of shape `(n, n)` (static)
    or a period of them, of shape `(period, n, n)`, round `t` using
    `W_t = weights[t % period]`. Convention (see the module docstring):
    `W[i, j]` is the weight node `i` gives to node `j`'s value, and one gossip
    round is `x_i <- sum_j W[i, j] x_j`.

    Construction validates the weights: every `W_t` must be finite,
    non-negative and doubly stochastic (sums within `1e-6`), and the network
    must reach consensus (spectral gap above `1e-9`; for a time-varying
    topology, that of the product over one period). A `Topology` is
    immutable: it keeps a read-only float64 copy of `weights`.

    Args:
        weights: Array-like of shape `(n, n)` or `(period, n, n)`.
        name: Optional name, shown by `repr`.

    Raises:
        TypeError: If `weights` is not numeric or `name` is not a string.
        ValueError: If `weights` has the wrong shape, is empty, has
            non-finite or negative entries, is not doubly stochastic, or
            describes a network that never reaches consensus.

    Example:
        >>> import numpy as np
        >>> from tf_decentral import topology
        >>> pair = topology.Topology(np.full((2, 2), 0.5), name="pair")
        >>> pair
        Topology(name='pair', num_nodes=2, period=1)
        >>> pair.neighbors(0), pair.spectral_gap()
        ((1,), 1.0)
        >>> topology.Topology([[1.0, 0.0], [0.0, 1.0]])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: `weights` must describe a mixing graph on which gossip ...
    """

    __slots__ = ("_table", "_name", "_spectral_gap")

    def __init__(self, weights: npt.ArrayLike, *, name: str | None = None):
        if name is not None and not isinstance(name, str):
            raise TypeError(
                "`name` must be a string or None. "
                f"Received: name={name!r} of type {type(name).__name__}"
            )
        self._table, self._spectral_gap = _as_weight_table(weights)
        self._name = name

    @property
    def num_nodes(self) -> int:
        """The number of nodes `n`.

        Example:
            >>> from tf_decentral import topology
            >>> topology.ring(5).num_nodes
            5
        """
        return self._table.shape[1]

    @property
    def period(self) -> int:
        """The number of distinct rounds before `W_t` repeats; 1 if static.

        Example:
            >>> from tf_decentral import topology
            >>> topology.ring(8).period, topology.one_peer_exponential(8).period
            (1, 3)
        """
        return self._table.shape[0]

    @property
    def is_time_varying(self) -> bool:
        """Whether `W_t` depends on the round `t` (`period > 1`).

        Example:
            >>> from tf_decentral import topology
            >>> topology.one_peer_exponential(8).is_time_varying
            True
        """
        return self.period > 1

    @property
    def name(self) -> str | None:
        """The name given at construction, or `None`.

        Example:
            >>> from tf_decentral import topology
            >>> topology.torus(2, 3).name
            'torus'
        """
        return self._name

    def weights(self, step: int = 0) -> np.ndarray:
        """Returns the mixing matrix `W_t` of round `step`, `t = step % period`.

        Args:
            step: The gossip round (training step), `>= 0`.

        Returns:
            A read-only float64 view of shape `(num_nodes, num_nodes)`.

        Raises:
            TypeError: If `step` is not an integer.
            ValueError: If `step` is negative.

        Example:
            >>> from tf_decentral import topology
            >>> topology.one_peer_exponential(4).weights(step=3)
            array([[0.5, 0. , 0.5, 0. ],
                   [0. , 0.5, 0. , 0.5],
                   [0.5, 0. , 0.5, 0. ],
                   [0. , 0.5, 0. , 0.5]])
        """
        step = _checks.check_int(step, "step", minimum=0)
        return self._table[step % self.period]

    def weights_table(self) -> np.ndarray:
        """Returns every `W_t` of one period, stacked.

        Returns:
            A read-only float64 array of shape `(period, num_nodes, num_nodes)`.

        Example:
            >>> from tf_decentral import topology
            >>> topology.one_peer_exponential(8).weights_table().shape
            (3, 8, 8)
        """
        return self._table

    def _check_node(self, i: int) -> int:
        i = _checks.check_int(i, "i", minimum=0)
        if i >= self.num_nodes:
            raise ValueError(
                f"`i` must be a node index in [0, {self.num_nodes}). "
                f"Received: i={i}"
            )
        return i

    def neighbors(self, i: int, step: int = 0) -> tuple[int, ...]:
        """Returns the nodes whose values node `i` mixes in at round `step`.

        These are the `j != i` with `W_t[i, j] > 0`: the nodes `i` receives
        from.

        Args:
            i: A node index in `[0, num_nodes)`.
            step: The gossip round, `>= 0`.

        Returns:
            The neighbors' indices, sorted.

        Raises:
            TypeError: If `i` or `step` is not an integer.
            ValueError: If `i` or `step` is out of range.

        Example:
            >>> from tf_decentral import topology
            >>> topology.exponential(8).neighbors(0)
            (1, 2, 4)
        """
        row = self.weights(step)[self._check_node(i)]
        return tuple(j for j in np.flatnonzero(row > 0).tolist() if j != i)

    def out_neighbors(self, i: int, step: int = 0) -> tuple[int, ...]:
        """Returns the nodes that mix in node `i`'s value at round `step`.

        These are the `j != i` with `W_t[j, i] > 0`: the nodes `i` sends to.
        For a symmetric topology they equal `neighbors(i, step)`.

        Args:
            i: A node index in `[0, num_nodes)`.
            step: The gossip round, `>= 0`.

        Returns:
            The out-neighbors' indices, sorted.

        Raises:
            TypeError: If `i` or `step` is not an integer.
            ValueError: If `i` or `step` is out of range.

        Example:
            >>> from tf_decentral import topology
            >>> topology.exponential(8).out_neighbors(0)
            (4, 6, 7)
        """
        column = self.weights(step)[:, self._check_node(i)]
        return tuple(j for j in np.flatnonzero(column > 0).tolist() if j != i)

    @property
    def max_degree(self) -> int:
        """The largest `len(neighbors(i, t))` over all nodes and rounds.

        Example:
            >>> from tf_decentral import topology
            >>> topology.ring(8).max_degree, topology.torus(3, 3).max_degree
            (2, 4)
        """
        off_diagonal = self._table > 0
        diagonal = np.arange(self.num_nodes)
        off_diagonal[:, diagonal, diagonal] = False
        return int(off_diagonal.sum(axis=2).max())

    @property
    def is_symmetric(self) -> bool:
        """Whether every `W_t` equals its transpose (to within `1e-12`).

        Example:
            >>> from tf_decentral import topology
            >>> topology.ring(8).is_symmetric
            True
            >>> topology.exponential(8).is_symmetric
            False
        """
        return bool(
            np.allclose(
                self._table,
                self._table.transpose(0, 2, 1),
                rtol=0.0,
                atol=1e-12,
            )
        )

    def spectral_gap(self) -> float:
        """Returns the per-round spectral gap, as `topology.spectral_gap`.

        Returns:
            A float in `(0, 1]`; 1 means exact averaging.

        Example:
            >>> from tf_decentral import topology
            >>> round(topology.ring(4).spectral_gap(), 4)
            0.6667
        """
        return self._spectral_gap

    def __array__(
        self, dtype: npt.DTypeLike = None, copy: bool | None = None
    ) -> np.ndarray:
        """Returns the mixing matrix of a static topology, for `np.asarray`.

        Raises:
            TypeError: If the topology is time-varying: it has no single
                matrix.

        Example:
            >>> import numpy as np
            >>> from tf_decentral import topology
            >>> np.asarray(topology.complete(2))
            array([[0.5, 0.5],
                   [0.5, 0.5]])
        """
        if self.is_time_varying:
            raise TypeError(
                f"{self!r} is time-varying, so it has no single weight "
                "matrix to convert to an array. Use `weights(step)` for the "
                "matrix of round `step`, or `weights_table()` for all "
                f"{self.period} of them."
            )
        matrix = self._table[0]
        if dtype is not None and np.dtype(dtype) != matrix.dtype:
            if copy is False:
                raise ValueError(
                    f"Converting {self!r} to dtype={dtype} needs a copy. "
                    "Received: copy=False"
                )
            return matrix.astype(dtype)
        return matrix.copy() if copy else matrix

    def __repr__(self) -> str:
        name = "" if self._name is None else f"name={self._name!r}, "
        return (
            f"Topology({name}num_nodes={self.num_nodes}, period={self.period})"
        )
