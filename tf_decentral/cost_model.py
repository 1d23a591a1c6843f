"""Alpha-beta time per training step of every scheme, as TF actually runs it.

NumPy only: importing this module never imports TensorFlow (a test enforces
it), so planning tools and plots can use it cheaply.

Vocabulary (every time in seconds, every size in bytes):

* `p`: number of workers; `m`: model (= gradient) size in bytes.
* `L`: one-way latency host to host (`Network.latency`).
* `beta`: seconds per byte of one access link, each direction
  (`1 / Network.bandwidth`); every host has its own uplink and downlink, as
  in `bench/netsim` and in a switched cluster.
* `o`: software cost of one message on the TF runtime (gRPC, the collective
  executor, Python dispatch), about 2 ms on the 2-core machine of the
  measurements below (`Network.overhead`).
* `c`: compute time of one step on one worker (forward, backward, optimizer,
  Keras' own per-step work), measured, not modelled; a sequence of per-worker
  values models stragglers.
* A *pull* costs a request and a reply: TF's cross-worker collectives and
  remote reads are pulls (the receiver sends a RecvBuf RPC, the reply carries
  the data), so the minimum exchange is `2 (L + o)`, one round trip.

Two forms of every formula are given. The *textbook* alpha-beta forms (with
`alpha = L + o`) are those of the papers; TF's runtime departs from them by
2-3x (measured in `shared/design/research/netsim_measurements.md` and
`pairwise_exchange.md`, 8 workers in emulated hosts):

* Ring all-reduce overlaps latency with transfer: chunks move on
  independently with receives posted ahead, so the time is
  `max(2 (p - 1) (L + o), 2 (p - 1) / p * m * beta)`, not their sum
  (measured 319 ms at 4 KB and 20.4 ms one way = 14 x 22.8 ms; 567 ms for
  4 MB at 100 Mbit/s = 1.75 m beta, no latency term visible).
* A neighbour exchange (`broadcast_send_v2` / `broadcast_recv_v2` to every
  neighbour at once, `tf_decentral.ops.neighbor_exchange`) is one pull:
  `2 (L + o)` plus the bytes through the busiest link (`d * m * beta` for `d`
  out-neighbours sharing one uplink); a 2-member all-reduce would be `3 L`.

Every function broadcasts over NumPy arrays, so a whole sweep is one call.

References:
    Thakur, Rabenseifner, Gropp. "Optimization of Collective Communication
    Operations in MPICH." IJHPCA 2005 (ring all-reduce,
    `2 (p - 1) alpha + 2 (p - 1) / p m beta`).

    Patarasuk, Yuan. "Bandwidth Optimal All-reduce Algorithms for Clusters
    of Workstations." JPDC 2009.

    Dean et al. "Large Scale Distributed Deep Networks." NIPS 2012
    (Downpour: fetch every `n_fetch` steps, push every `n_push`).

    Li et al. "Scaling Distributed Machine Learning with the Parameter
    Server." OSDI 2014 (server bandwidth as the bottleneck; sharding).

    Lian et al. "Can Decentralized Algorithms Outperform Centralized
    Algorithms?" NeurIPS 2017 (D-PSGD: `d (alpha + m beta)` per step vs
    all-reduce's `O(p)` latency terms).

    Lian et al. "Asynchronous Decentralized Parallel Stochastic Gradient
    Descent." ICML 2018 (AD-PSGD: one atomic pairwise average per step).

    Ying et al. "Exponential Graph is Provably Efficient for Decentralized
    Deep Training." NeurIPS 2021 (one-peer exponential graphs).

Example:
    >>> from tf_decentral import cost_model as cm
    >>> net = cm.Network.from_netsim(rate_mbit=1000, latency_ms=20)
    >>> round(cm.ring_allreduce(0.4e6, 8, net), 3)   # 14 (L + o)
    0.308
    >>> round(cm.gossip(0.4e6, 1, net), 3)           # 2 (L + o) + m beta
    0.047

Longer than 500 lines because every scheme's formula, in its textbook and
its measured-runtime form, sits here side by side with the others it is
compared with; each function is short.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

DEFAULT_OVERHEAD = 2e-3
"""`o`: seconds of software per message on TF's runtime, measured on the
2-core machine of `netsim_measurements.md` (26 ms for a 14-hop ring
all-reduce of 4 KB with no emulated latency)."""

SCHEMES = (
    "allreduce",
    "ps_sync",
    "downpour",
    "gossip",
    "one_peer",
    "ad_psgd",
)
"""Schemes `step_time` and `throughput` know. `ps_sync` is S-PSGD,
`downpour` is A-PSGD / Downpour, `gossip` is D-PSGD with `degree`
out-neighbours (ring: 2, exponential graph of 8: 3), `one_peer` is D-PSGD
on a one-peer (time-varying) graph."""

SYNCHRONOUS = frozenset({"allreduce", "ps_sync", "gossip", "one_peer"})
"""Schemes in which every worker waits for the slowest, step by step."""

Seconds = float | np.ndarray  # A time, or an array of times (broadcasting).


@dataclasses.dataclass(frozen=True)
class Network:
    """The links of an emulated or real cluster.

    Attributes:
        latency: One-way latency host to host in seconds, >= 0.
        bandwidth: Bytes per second of every access link in each direction,
            > 0; `inf` for an unshaped link.
        overhead: Software cost `o` of one message in seconds, >= 0.
    """

    latency: float
    bandwidth: float = float("inf")
    overhead: float = DEFAULT_OVERHEAD

    def __post_init__(self):
        if not np.all(np.asarray(self.latency) >= 0):
            raise ValueError(
                f"`latency` must be >= 0. Received: latency={self.latency!r}"
            )
        if not np.all(np.asarray(self.bandwidth) > 0):
            raise ValueError(
                "`bandwidth` must be > 0 bytes/s. "
                f"Received: bandwidth={self.bandwidth!r}"
            )
        if not np.all(np.asarray(self.overhead) >= 0):
            raise ValueError(
                f"`overhead` must be >= 0. Received: overhead={self.overhead!r}"
            )

    @property
    def beta(self) -> Seconds:
        """Seconds per byte of one access link."""
        return 1.0 / np.asarray(self.bandwidth, dtype=float)

    @property
    def hop(self) -> Seconds:
        """`L + o`: one message's latency including software."""
        return np.asarray(self.latency, dtype=float) + self.overhead

    @classmethod
    def from_netsim(
        cls,
        rate_mbit: float | None,
        latency_ms: float,
        overhead_ms: float = DEFAULT_OVERHEAD * 1e3,
    ) -> "Network":
        """Returns the network of `bench/netsim` at a rate and latency.

        Args:
            rate_mbit: Access link rate in Mbit/s; None or inf = unshaped.
            latency_ms: One-way latency host to host in ms.
            overhead_ms: `o` in ms.

        Example:
            >>> Network.from_netsim(100, 20).bandwidth
            12500000.0
        """
        if rate_mbit is None or not np.isfinite(rate_mbit):
            bandwidth = float("inf")
        else:
            bandwidth = float(rate_mbit) * 1e6 / 8.0
        return cls(
            latency=float(latency_ms) / 1e3,
            bandwidth=bandwidth,
            overhead=float(overhead_ms) / 1e3,
        )


def _out(value):
    """Returns a Python float for a 0-d result, else the array."""
    value = np.asarray(value, dtype=float)
    return float(value) if value.ndim == 0 else value


def _check_at_least_one(name, value):
    """Raises ValueError unless every element of `value` is >= 1."""
    if not np.all(np.asarray(value) >= 1):
        raise ValueError(f"`{name}` must be >= 1. Received: {name}={value!r}")


def _check_workers(num_workers):
    _check_at_least_one("num_workers", num_workers)


def ring_allreduce(
    model_bytes: Seconds,
    num_workers: int,
    network: Network,
    *,
    extra_reductions: int = 0,
    textbook: bool = False,
) -> Seconds:
    """Returns the time of one ring all-reduce of `m` bytes over `p` workers.

    TF (`CollectiveReduceV2`, RingReducer, what `MultiWorkerMirroredStrategy`
    and `tfd.AllReduceStrategy` use on CPU) overlaps the `2 (p - 1)` latency
    hops with the transfer of the `2 (p - 1) / p * m` bytes every worker
    sends and receives:

        T = max(2 (p - 1) (L + o), 2 (p - 1) / p * m * beta)

    Textbook (Thakur et al. 2005): `2 (p - 1) (L + o) + 2 (p - 1) / p m beta`.

    Keras `fit` under `MultiWorkerMirroredStrategy` (hence
    `tfd.AllReduceStrategy`) all-reduces more than the gradients: the step's
    logs (the loss and every compiled metric) are reduced across workers in
    every step, each one more all-reduce of a scalar, chained after the
    gradients' on the strategy's ordering token (three `CollectiveReduceV2`
    per step for `metrics=["accuracy"]`, counted in the traced train
    function). Each costs the latency term once more:

        T = max(2 (p - 1) (L + o), 2 (p - 1) / p m beta)
            + extra_reductions * 2 (p - 1) (L + o)

    Args:
        model_bytes: `m`, bytes reduced (all gradients).
        num_workers: `p`, at least 1 (1: no communication).
        network: The links.
        extra_reductions: Small all-reduces after the gradients' in the
            same step (Keras `fit`: 1 for the loss + 1 per metric); >= 0.
        textbook: Use the textbook sum instead of TF's overlap.
    """
    _check_workers(num_workers)
    if not np.all(np.asarray(extra_reductions) >= 0):
        raise ValueError(
            "`extra_reductions` must be >= 0. "
            f"Received: extra_reductions={extra_reductions!r}"
        )
    p = np.asarray(num_workers, dtype=float)
    hops = 2.0 * (p - 1.0) * network.hop
    transfer = 2.0 * (p - 1.0) / p * np.asarray(model_bytes) * network.beta
    extra = np.asarray(extra_reductions, dtype=float) * hops
    if textbook:
        return _out(hops + transfer + extra)
    return _out(np.maximum(hops, transfer) + extra)


def gossip(
    model_bytes: Seconds,
    degree: int,
    network: Network,
    *,
    textbook: bool = False,
) -> Seconds:
    """Returns the time of one D-PSGD neighbour exchange with `d` peers.

    `tf_decentral.ops.neighbor_exchange` issues one `broadcast_send_v2` /
    `broadcast_recv_v2` pair per directed edge, to every neighbour at once:
    one pull (request + reply) whatever the degree, and `d` copies of the
    model through this worker's uplink (and `d` through its downlink):

        T = 2 (L + o) + d * m * beta

    Measured (`pairwise_exchange.md`, 8 hosts, L = 20.4 ms): 42 ms for one
    peer and for a ring at 4 KB (2.1 L); at 4 MB the ring is bandwidth-bound
    at 1.7x one peer.

    Textbook (Lian et al. 2017, edges one after another):
    `d (L + o + m beta)`.

    Args:
        model_bytes: `m`, bytes of the packed model.
        degree: `d`, out-neighbours per step (ring 2, exponential graph
            `log2 p`, one-peer 1); at least 1.
        network: The links.
        textbook: Use the serialized textbook form.
    """
    _check_at_least_one("degree", degree)
    d = np.asarray(degree, dtype=float)
    transfer = d * np.asarray(model_bytes) * network.beta
    if textbook:
        return _out(d * network.hop + transfer)
    return _out(2.0 * network.hop + transfer)


def one_peer_gossip(
    model_bytes: Seconds, network: Network, *, textbook: bool = False
) -> Seconds:
    """Returns the time of one exchange with a single peer (`gossip`, d=1).

    TF: `2 (L + o) + m beta` (one pull). Textbook: `L + o + m beta`.
    """
    return gossip(model_bytes, 1, network, textbook=textbook)


def parameter_server(
    model_bytes: Seconds,
    num_workers: int,
    network: Network,
    *,
    num_shards: int = 1,
    round_trips: float = 3.0,
    textbook: bool = False,
) -> Seconds:
    """Returns the communication of one synchronous PS step (S-PSGD).

    Every worker fetches the `m`-byte model (a pull: request + reply) and
    pushes its `m`-byte gradient (a remote call: request carrying the data +
    reply); the chief dispatches the step to the workers and learns that it
    ended (one more round trip). The `s` servers' links carry `p m / s`
    bytes each way, so the transfer takes `max(1, p / s) m beta` per
    direction:

        T = round_trips * 2 (L + o) + 2 * max(1, p / s) * m * beta

    with `round_trips` = 3 (dispatch, fetch, push) for the protocol's
    minimum; an implementation that makes more (per-variable calls, polls
    of a barrier) sets it higher: the benchmark measures it once, on a
    separate experiment (`bench/run.py`'s `round_trips`).

    Textbook (one server, gradients and models sent one after another):
    `2 p (L + o + m beta)`; with `s` shards, `2 (p / s) (L + o + m beta)`.

    Args:
        model_bytes: `m`.
        num_workers: `p`.
        network: The links (the servers' links are as fast as the workers').
        num_shards: `s`, parameter servers holding equal shards; >= 1.
        round_trips: Sequential round trips per step, > 0.
        textbook: Use the textbook form.
    """
    _check_workers(num_workers)
    if not np.all(np.asarray(round_trips) > 0):
        raise ValueError(
            f"`round_trips` must be > 0. Received: round_trips={round_trips!r}"
        )
    p = np.asarray(num_workers, dtype=float)
    _check_at_least_one("num_shards", num_shards)
    s = np.asarray(num_shards, dtype=float)
    m = np.asarray(model_bytes)
    if textbook:
        return _out(
            2.0 * np.maximum(p / s, 1.0) * (network.hop + m * network.beta)
        )
    fan = np.maximum(1.0, p / s)
    hops = np.asarray(round_trips, dtype=float) * 2.0 * network.hop
    return _out(hops + 2.0 * fan * m * network.beta)


def downpour(
    model_bytes: Seconds,
    num_workers: int,
    network: Network,
    *,
    compute: Seconds = 0.0,
    n_fetch: int = 1,
    n_push: int = 1,
    num_shards: int = 1,
    round_trips: float | None = None,
    textbook: bool = False,
) -> Seconds:
    """Returns one worker's time per step under Downpour / A-PSGD.

    A worker computes `c`, fetches every `n_fetch` steps (a pull,
    `2 (L + o) + m beta`) and pushes every `n_push` steps (a remote call,
    `2 (L + o) + m beta`); the chief's dispatch overlaps with the work
    (several closures in flight). The servers' links bound everyone: per
    step of every worker they move `p m / (s n_fetch)` bytes out and
    `p m / (s n_push)` in, so

        T = max(c + (2 (L + o) + m beta) (1 / n_fetch + 1 / n_push),
                p m beta / (s min(n_fetch, n_push)))

    The protocol's round trips per step, `1 / n_fetch + 1 / n_push`, are
    the default of `round_trips`; an implementation that makes more
    (TF's dispatch of each closure, its completion) passes its own count
    `r`, which replaces them: `c + r 2 (L + o) + m beta (1 / n_fetch +
    1 / n_push)`.

    Textbook (Dean et al. 2012): `c + (L + o + m beta) (1 / n_fetch +
    1 / n_push)`, no server bound.

    Args:
        model_bytes: `m`.
        num_workers: `p`, workers sharing the servers.
        network: The links.
        compute: `c`, this worker's compute per step.
        n_fetch: Steps between fetches, >= 1.
        n_push: Steps between pushes, >= 1.
        num_shards: `s`, parameter servers, >= 1.
        round_trips: Sequential round trips per step, > 0; None: the
            protocol's, `1 / n_fetch + 1 / n_push`.
        textbook: Use the textbook form (`round_trips` must be None).
    """
    _check_workers(num_workers)
    _check_at_least_one("n_fetch", n_fetch)
    _check_at_least_one("n_push", n_push)
    m = np.asarray(model_bytes)
    messages = 1.0 / np.asarray(n_fetch) + 1.0 / np.asarray(n_push)
    if round_trips is None:
        round_trips = messages
    elif textbook:
        raise ValueError(
            "The textbook form counts one message per fetch and push: "
            f"`round_trips` must be None. Received: round_trips={round_trips!r}"
        )
    elif not np.all(np.asarray(round_trips) > 0):
        raise ValueError(
            f"`round_trips` must be > 0. Received: round_trips={round_trips!r}"
        )
    hops = network.hop if textbook else 2.0 * network.hop
    worker = (
        np.asarray(compute)
        + np.asarray(round_trips, dtype=float) * hops
        + messages * m * network.beta
    )
    if textbook:
        return _out(worker)
    server = (
        np.asarray(num_workers, dtype=float)
        * m
        * network.beta
        / (np.asarray(num_shards, dtype=float) * np.minimum(n_fetch, n_push))
    )
    return _out(np.maximum(worker, server))


def ad_psgd(
    model_bytes: Seconds,
    network: Network,
    *,
    round_trips: float = 3.0,
    textbook: bool = False,
) -> Seconds:
    """Returns the communication of one AD-PSGD atomic pairwise average.

    `tfd.AsyncGossipStrategy`'s exchange of node `i` with peer `j` is one
    function call: take `i`'s lease and read `x_i` on `i`'s server, send
    `x_i` to `j` (`m beta`), average and write `x_j` there, send the mean
    back (`m beta`), write `x_i`. Counted from the implementation on TF
    2.21's eager runtime (`bench/rtt_floor.py`): calling a function that
    has a part on `j`'s server costs 2 round trips by itself (the part is
    sent to `j`, and its completion comes back), and `j`'s part pulls
    `x_i` from `i`'s server (one more); the mean's way back overlaps the
    completion. So `round_trips` = 3, with the model once each way:

        T = round_trips * 2 (L + o) + 2 m beta

    (measured: 3.1 round trips for that shape with 4 KB, 4.0 with 400 KB,
    where TCP and HTTP/2 windows add time that `m beta` does not model.)

    Textbook (Lian et al. 2018): `L + o + m beta` (one exchange, the
    communication thread overlapping the compute).

    Args:
        model_bytes: `m`.
        network: The links.
        round_trips: Sequential round trips per exchange, > 0.
        textbook: Use the textbook form.
    """
    m = np.asarray(model_bytes)
    if textbook:
        return _out(network.hop + m * network.beta)
    return _out(round_trips * 2.0 * network.hop + 2.0 * m * network.beta)


def bytes_sent_per_step(
    scheme: str,
    *,
    model_bytes: Seconds,
    num_workers: int,
    degree: int = 2,
    n_push: int = 1,
) -> Seconds:
    """Returns the bytes one worker sends per step of `scheme` (payload).

    What each scheme's worker puts on its uplink per step, as the formulas
    above count it (headers, the servers' fetch replies and scalar metrics
    are not counted):

    * `allreduce`: `2 (p - 1) / p * m` (ring reduce-scatter + all-gather);
    * `gossip`: `d * m` (its parameters to every out-neighbour);
      `one_peer`: `m`;
    * `ad_psgd`: `m` per exchange, for both sides (the active worker's
      `x_i` goes to its peer, the mean comes back from it), so `m` per
      active step and `m` per exchange a passive worker serves;
    * `ps_sync`: `m` (the gradient's push; the model comes from the
      servers); `downpour`: `m / n_push`.

    Args:
        scheme: One of `SCHEMES`.
        model_bytes: `m`.
        num_workers: `p` (`allreduce` only).
        degree: `gossip` only: out-neighbours per step, >= 1.
        n_push: `downpour` only: steps between pushes, >= 1.

    Example:
        >>> bytes_sent_per_step("allreduce", model_bytes=4e6, num_workers=8)
        7000000.0
    """
    _check_workers(num_workers)
    m = np.asarray(model_bytes, dtype=float)
    if scheme == "allreduce":
        p = np.asarray(num_workers, dtype=float)
        return _out(2.0 * (p - 1.0) / p * m)
    if scheme == "gossip":
        _check_at_least_one("degree", degree)
        return _out(np.asarray(degree, dtype=float) * m)
    if scheme in ("one_peer", "ad_psgd", "ps_sync"):
        return _out(m)
    if scheme == "downpour":
        _check_at_least_one("n_push", n_push)
        return _out(m / np.asarray(n_push, dtype=float))
    raise ValueError(
        f"`scheme` must be one of {SCHEMES}. Received: scheme={scheme!r}"
    )


def communication_time(
    scheme: str,
    *,
    model_bytes: Seconds,
    num_workers: int,
    network: Network,
    degree: int = 2,
    num_shards: int = 1,
    extra_reductions: int = 0,
    round_trips: float | None = None,
    textbook: bool = False,
) -> Seconds:
    """Returns the communication part of one step of `scheme` (no compute).

    For `downpour` this is one worker's fetch + push per step with
    `n_fetch = n_push = 1` and no server bound (see `downpour`).
    `round_trips` (None: the protocol's) applies to the schemes whose
    function takes it: `ps_sync`, `downpour` and `ad_psgd`.
    """
    _check_round_trips_scheme(scheme, round_trips)
    if scheme == "allreduce":
        return ring_allreduce(
            model_bytes,
            num_workers,
            network,
            extra_reductions=extra_reductions,
            textbook=textbook,
        )
    if scheme == "ps_sync":
        return parameter_server(
            model_bytes,
            num_workers,
            network,
            num_shards=num_shards,
            **({} if round_trips is None else {"round_trips": round_trips}),
            textbook=textbook,
        )
    if scheme == "downpour":
        return downpour(
            model_bytes, 1, network, round_trips=round_trips, textbook=textbook
        )
    if scheme == "gossip":
        return gossip(model_bytes, degree, network, textbook=textbook)
    if scheme == "one_peer":
        return one_peer_gossip(model_bytes, network, textbook=textbook)
    if scheme == "ad_psgd":
        return ad_psgd(
            model_bytes,
            network,
            **({} if round_trips is None else {"round_trips": round_trips}),
            textbook=textbook,
        )
    raise ValueError(
        f"`scheme` must be one of {SCHEMES}. Received: scheme={scheme!r}"
    )


_ROUND_TRIP_SCHEMES = ("ps_sync", "downpour", "ad_psgd")


def _check_round_trips_scheme(scheme, round_trips):
    if round_trips is not None and scheme not in _ROUND_TRIP_SCHEMES:
        raise ValueError(
            f"`round_trips` applies to {_ROUND_TRIP_SCHEMES} only. Received: "
            f"scheme={scheme!r}, round_trips={round_trips!r}"
        )


def _compute_array(compute, num_workers):
    c = np.asarray(compute, dtype=float)
    if c.ndim == 0:
        return np.full(int(num_workers), float(c))
    if c.shape != (int(num_workers),):
        raise ValueError(
            "`compute` must be a number or one value per worker. Received: "
            f"shape {c.shape} for num_workers={num_workers}"
        )
    return c


def worker_step_times(
    scheme: str,
    *,
    model_bytes: float,
    num_workers: int,
    network: Network,
    compute: float | Sequence[float],
    degree: int = 2,
    num_shards: int = 1,
    n_fetch: int = 1,
    n_push: int = 1,
    extra_reductions: int = 0,
    overlap: bool = False,
    round_trips: float | None = None,
    textbook: bool = False,
) -> np.ndarray:
    """Returns each worker's time per step, shape `(num_workers,)`.

    Synchronous schemes (`SYNCHRONOUS`): every worker waits for the
    slowest, so each takes `max_i c_i` plus the communication. D-PSGD's
    exchange needs only the parameters of the step's start, so with
    `overlap=True` it runs during the compute (`max(c, T_comm)`, what
    `GossipStrategy` allows: its sends read the variables, not the
    gradients). Asynchronous schemes: each worker at its own pace,
    `c_i + T_comm` (Downpour: bounded below by the servers' bandwidth);
    AD-PSGD with `overlap=True` `max(c_i, T_comm)` (the paper's
    communication thread, `AsyncGossipStrategy(overlap=True)`: exchange
    `t` runs while step `t + 1` computes).

    Args:
        scheme: One of `SCHEMES`.
        model_bytes: `m`.
        num_workers: `p`.
        network: The links.
        compute: `c`, seconds per step; a number, or one per worker (a
            straggler has a larger value).
        degree: `gossip` only: out-neighbours per step.
        num_shards: `ps_sync` and `downpour`: parameter servers.
        n_fetch: `downpour` only.
        n_push: `downpour` only.
        extra_reductions: `allreduce` only: small all-reduces per step
            after the gradients' (Keras `fit`: loss + metrics; see
            `ring_allreduce`).
        overlap: `gossip`, `one_peer` and `ad_psgd`: communication overlaps
            compute.
        round_trips: `ps_sync`, `downpour` and `ad_psgd`: sequential round
            trips per step (per exchange for `ad_psgd`) in place of the
            protocol's count, e.g. counted on an implementation.
        textbook: Use the textbook communication forms.
    """
    if scheme not in SCHEMES:
        raise ValueError(
            f"`scheme` must be one of {SCHEMES}. Received: scheme={scheme!r}"
        )
    _check_workers(num_workers)
    c = _compute_array(compute, num_workers)
    if scheme == "downpour":
        return np.asarray(
            downpour(
                model_bytes,
                num_workers,
                network,
                compute=c,
                n_fetch=n_fetch,
                n_push=n_push,
                num_shards=num_shards,
                round_trips=round_trips,
                textbook=textbook,
            ),
            dtype=float,
        )
    comm = communication_time(
        scheme,
        model_bytes=model_bytes,
        num_workers=num_workers,
        network=network,
        degree=degree,
        num_shards=num_shards,
        extra_reductions=extra_reductions,
        round_trips=round_trips,
        textbook=textbook,
    )
    if scheme in SYNCHRONOUS:
        slowest = c.max()
        if overlap and scheme in ("gossip", "one_peer"):
            step = np.maximum(slowest, comm)
        else:
            step = slowest + comm
        return np.full(int(num_workers), float(step))
    if overlap and scheme == "ad_psgd":
        return np.maximum(c, comm)
    return c + comm


def step_time(scheme: str, **kwargs) -> float:
    """Returns the mean time per step over workers (`worker_step_times`).

    For synchronous schemes every worker has this step time; for
    asynchronous ones it is the mean of the workers' own.

    Example:
        >>> net = Network.from_netsim(rate_mbit=100, latency_ms=1)
        >>> round(step_time("allreduce", model_bytes=4e6, num_workers=8,
        ...                 network=net, compute=0.05), 3)
        0.61
    """
    return float(np.mean(worker_step_times(scheme, **kwargs)))


def throughput(scheme: str, *, batch_size: int, **kwargs) -> float:
    """Returns the cluster's samples per second.

    `batch_size` is per worker per step; the sum over workers of
    `batch_size / T_i` (`worker_step_times`).

    Example:
        >>> net = Network.from_netsim(rate_mbit=1000, latency_ms=1)
        >>> fast = throughput("ad_psgd", batch_size=32, model_bytes=4e5,
        ...                   num_workers=8, network=net, compute=0.1)
        >>> slow = throughput("ad_psgd", batch_size=32, model_bytes=4e5,
        ...                   num_workers=8, network=net,
        ...                   compute=[0.1] * 7 + [0.4])
        >>> round(slow / fast, 2)
        0.91
    """
    times = worker_step_times(scheme, **kwargs)
    return float(np.sum(batch_size / times))
