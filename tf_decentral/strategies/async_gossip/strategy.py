"""AsyncGossipStrategy: asynchronous decentralized SGD (AD-PSGD).

Every worker of a TF_CONFIG cluster runs the same program and its own
`model.fit`, at its own pace, with no global barrier. After each training
step, worker `i` atomically averages its model with one neighbour `j` drawn
at random from the topology and applies its step (Lian et al. 2018,
Algorithm 1):

    x_i, x_j <- (x_i + x_j) / 2      (atomic: both copies locked)
    x_i      <- x_i + delta_i        (delta_i: the optimizer's update, computed
                                      on worker i's possibly stale copy)

A slow worker slows nobody: its peers average with its copy on its server
whenever they like, without waiting for its Python program. On a bipartite
topology (an even ring) the workers split as in the paper: active ones
start every exchange with a random passive neighbour, passive ones only
apply their own updates.

Vocabulary: a *node* is a worker (the chief first, then the workers, TF's
order); its *shared copy* `x_i` lives on its own TF server; its *local
model* is the Keras model on its client device, a cache of `x_i` that Keras
trains. See `tf_decentral/strategies/_async_gossip_exchange.py` for the
locks and `_async_gossip_runtime.py` for the start-up.

References:
    Lian, Zhang, Zhang, Liu. "Asynchronous Decentralized Parallel Stochastic
    Gradient Descent." ICML 2018.
"""

import collections
import contextlib
import random
import time
import weakref

import numpy as np
import tensorflow as tf
from absl import logging

from tf_decentral import topology as topology_lib
from tf_decentral._tf_private import distribute_lib
from tf_decentral._tf_private import input_util
from tf_decentral._tf_private import one_device_strategy
from tf_decentral.strategies import _keras_hooks
from tf_decentral.strategies._collective import (
    communication_options as make_communication_options,
)
from tf_decentral.strategies.async_gossip import exchange as exchange_lib
from tf_decentral.strategies.async_gossip import runtime as runtime_lib

DEFAULT_TIMEOUT_SECONDS = 30.0
"""How long an exchange may hold a peer's lock, and a step may wait for one,
when `communication_options` gives no timeout."""

IDLE_RECHECK_SECONDS = (0.5, 4.0)
"""A peer found idle (its `fit` ended) is tried again after the first value,
then after twice as long each time it is still idle, up to the second."""

STARTUP_TIMEOUT_SECONDS = 600.0
"""How long a worker waits for the others to connect and to start `fit`."""

# A peer that raises one of these during an exchange is dropped: it died,
# stopped, or restarted and lost its state.
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
    tf.errors.InternalError,
    tf.errors.NotFoundError,
    tf.errors.FailedPreconditionError,
)


def _resolver_from_env():
    from tf_decentral.cluster import tf_config

    config = tf_config.from_env()
    if config is None:
        raise ValueError(
            "AsyncGossipStrategy needs a cluster of at least 2 workers, "
            "described by TF_CONFIG or `cluster_resolver`. Received: "
            "cluster_resolver=None and no TF_CONFIG. Start the workers with "
            "`python -m tf_decentral.launch --workers 3 -- python train.py`,"
            " or set TF_CONFIG on every worker."
        )
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _undirected_peers(topology):
    """Returns every node's peers: its neighbours in any round, both ways."""
    n = topology.num_nodes
    adjacency = np.zeros((n, n), dtype=bool)
    for step in range(topology.period):
        w = topology.weights(step) > 0
        adjacency |= w | w.T
    np.fill_diagonal(adjacency, False)
    return adjacency


def two_coloring(adjacency):
    """Returns a 0/1 colour per node with no edge inside a colour, or None.

    `adjacency` is a symmetric boolean matrix; None means the graph is not
    bipartite (it has an odd cycle).
    """
    n = len(adjacency)
    colour = [-1] * n
    for root in range(n):
        if colour[root] >= 0:
            continue
        colour[root] = 0
        frontier = [root]
        while frontier:
            node = frontier.pop()
            for other in np.flatnonzero(adjacency[node]).tolist():
                if colour[other] < 0:
                    colour[other] = 1 - colour[node]
                    frontier.append(other)
                elif colour[other] == colour[node]:
                    return None
    return colour


def _check_connected(adjacency, spec):
    """Raises a clear error if the pairs of `adjacency` leave a node apart."""
    n = adjacency.shape[0]
    seen, frontier = {0}, [0]
    while frontier:
        k = frontier.pop()
        for j in np.flatnonzero(adjacency[k]).tolist():
            if j not in seen:
                seen.add(j)
                frontier.append(j)
    if len(seen) < n:
        apart = sorted(set(range(n)) - seen)
        raise ValueError(
            "`topology` must connect every worker to every other through "
            "neighbours, or the workers never agree on one model. "
            f"Received: a topology in which workers {sorted(seen)} never "
            f"exchange, directly or indirectly, with workers {apart} "
            f"(topology={spec!r})."
        )


def _resolve_topology(spec, num_nodes):
    if not isinstance(spec, str | topology_lib.Topology):
        try:
            weights = np.asarray(spec, dtype=float)
        except (TypeError, ValueError):
            weights = None
        if (
            weights is not None
            and weights.ndim in (2, 3)
            and weights.shape[-1] == weights.shape[-2] == num_nodes
        ):
            table = weights if weights.ndim == 3 else weights[None]
            adjacency = np.zeros((num_nodes, num_nodes), dtype=bool)
            for w in table:
                adjacency |= (w > 0) | (w > 0).T
            np.fill_diagonal(adjacency, False)
            _check_connected(adjacency, spec)
    topology = topology_lib.resolve(spec, num_nodes)
    adjacency = _undirected_peers(topology)
    _check_connected(adjacency, spec)
    return topology, adjacency


class _AsyncGossipExtended(
    one_device_strategy.OneDeviceExtended, _keras_hooks.OptimizerHooks
):
    """Implementation of `AsyncGossipStrategy` on one worker."""

    def __init__(
        self, container, runtime, topology, peers, seed, timeout, active
    ):
        super().__init__(container, runtime.client_device)
        self._active = bool(active)
        self.hook_counts = collections.Counter()
        self._runtime = runtime
        self._layout = runtime.layout
        self._topology = topology
        self._peers = tuple(peers)
        self._timeout = float(timeout)
        node = self._layout.node
        self._rng = random.Random(None if seed is None else seed + node)
        self.locks = exchange_lib.Locks(self._layout, self._timeout)
        self._models = weakref.WeakKeyDictionary()
        self._num_models = 0
        self.dropped = {}
        self.idle = {}  # peer -> (monotonic time of next check, wait)
        self._fits = 0
        self.stats = collections.Counter()
        self.exchanges = collections.Counter()

    @property
    def client_device(self) -> str:
        """The device of this worker's Keras model."""
        return self._runtime.client_device

    # Input ------------------------------------------------------------------

    def _distribute_datasets_from_function(self, dataset_fn, options):
        context = distribute_lib.InputContext(
            num_input_pipelines=self._layout.num_nodes,
            input_pipeline_id=self._layout.node,
            num_replicas_in_sync=1,
        )
        return input_util.get_distributed_datasets_from_function(
            dataset_fn,
            self._input_workers_with_options(options),
            [context],
            self._container_strategy(),
            options=options,
        )

    # Keras hooks (see _keras_hooks) ----------------------------------------

    def keras_reduce_gradients(self, optimizer, grads_and_vars):
        """Keeps gradients local: one replica, nothing to all-reduce."""
        del optimizer
        self.hook_counts["local_gradients"] += 1
        return grads_and_vars

    def keras_apply_gradients(
        self, optimizer, grads_and_vars, learning_rate, apply_fn
    ):
        """Applies the step to the local model; the exchange comes after."""
        del optimizer, grads_and_vars, learning_rate
        self.hook_counts["local_apply"] += 1
        return apply_fn()

    def keras_wrap_train_function(self, model, train_function):
        """Follows every Keras train step with one exchange."""
        self.hook_counts["wrap_train_function"] += 1

        def train_function_with_exchange(iterator):
            shared = self.shared_model(model)
            logs = train_function(iterator)
            self.exchange(shared)
            return logs

        return train_function_with_exchange

    def explain_communication_error(self, error):
        layout = self._layout
        return (
            f"Asynchronous gossip on {layout.task(layout.node)} failed: "
            f"{type(error).__name__}. Its peers "
            f"{[layout.task(j) for j in self._peers]} are dropped one by one "
            "when they stop answering; this error came from elsewhere (this "
            "worker's own server or model). TensorFlow's error: "
            + getattr(error, "message", str(error))[:2000]
        )

    # Shared state -----------------------------------------------------------

    def shared_model(self, model, create=True):
        """Returns `model`'s `SharedModel`, creating it on the first call."""
        shared = self._models.get(model)
        if shared is None and create:
            variables = [v.value for v in model.weights if _is_float(v)]
            if not variables:
                raise ValueError(
                    "AsyncGossipStrategy averages a model's floating-point "
                    f"weights, but model {model.name!r} has none. Build the "
                    "model before training it."
                )
            shared = exchange_lib.SharedModel(
                self.locks,
                self.client_device,
                variables,
                f"m{self._num_models}",
            )
            self._num_models += 1
            shared.initialize(STARTUP_TIMEOUT_SECONDS)
            self._models[model] = shared
        return shared

    def exchange(self, shared):
        """One exchange with a random live peer; retries while locks are
        busy, for at most the timeout (then the delta waits for the next
        step). A peer found idle is skipped until its next check."""
        deadline = time.monotonic() + self._timeout
        pause = 0.001
        while True:
            live = self._candidates() if self._active else []
            peer = self._rng.choice(live) if live else None
            token = self.locks.next_token()
            try:
                status = shared.exchange(peer, token)
            except _PEER_ERRORS as e:
                self._release(shared, token)
                if peer is None:
                    raise
                self._drop(peer, e)
                continue
            if status == "done":
                self.exchanges[peer if peer is not None else "solo"] += 1
                self.idle.pop(peer, None)
                return True
            if status == "idle":
                self._mark_idle(peer)
                continue
            self.stats["busy"] += 1
            if time.monotonic() >= deadline:
                self.stats["skipped"] += 1
                return False
            time.sleep(pause * (0.5 + self._rng.random()))
            pause = min(2 * pause, 0.05)

    def _candidates(self):
        """Peers not dropped, and not idle unless their check is due."""
        now = time.monotonic()
        return [
            j
            for j in self._peers
            if j not in self.dropped
            and (j not in self.idle or self.idle[j][0] <= now)
        ]

    def _mark_idle(self, peer):
        """Skips `peer` (its fit ended) for a while, doubling the while
        each time it is found idle again (it is re-admitted as soon as an
        exchange with it succeeds)."""
        _, wait = self.idle.get(peer, (0.0, IDLE_RECHECK_SECONDS[0] / 2))
        wait = min(2 * wait, IDLE_RECHECK_SECONDS[1])
        self.idle[peer] = (time.monotonic() + wait, wait)
        self.stats["idle"] += 1

    def keras_fit_context(self, model):
        """Marks this worker as training while `fit` runs.

        After `fit` its peers skip it (it finished, or it evaluates or
        saves) until its next `fit`, and its local model is set to its
        shared copy, with what peers averaged into it until then: the model
        `evaluate`, `get_weights` and `save` see is this worker's copy, and
        stays it.
        """
        return self._training(model)

    @contextlib.contextmanager
    def _training(self, model):
        self.hook_counts["fit_context"] += 1
        self._fits += 1
        try:
            if self._fits == 1:
                self.locks.set_training(True)
            yield
        finally:
            self._fits -= 1
            if self._fits == 0:
                self._stop_training(model)

    def _stop_training(self, model):
        me = self._layout.task(self._layout.node)
        try:
            self.locks.set_training(False)
            # Peers' exchanges with this worker that saw it training have
            # ended once the flush below holds its lock; none comes after.
            shared = self.shared_model(model, create=False)
            if shared is not None and not self.flush(shared):
                logging.warning(
                    "AsyncGossipStrategy on %s: could not copy its shared "
                    "model into its local model after fit within %g s; the "
                    "local model misses its peers' last averages.",
                    me,
                    self._timeout,
                )
        except tf.errors.OpError as e:
            logging.warning(
                "AsyncGossipStrategy on %s: could not mark it idle after fit"
                " (%s: %s); its peers drop it when it stops answering.",
                me,
                type(e).__name__,
                e.message[:200],
            )

    def flush(self, shared):
        """Adds the local model's pending update to the shared copy and
        copies the result back (a solo exchange); returns whether done."""
        deadline = time.monotonic() + self._timeout
        while True:
            if shared.exchange(None, self.locks.next_token()) == "done":
                self.hook_counts["flush"] += 1
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _release(self, shared, token):
        try:
            shared.release(token)
        except tf.errors.OpError:
            pass  # The lease expires anyway.

    def _drop(self, peer, error):
        layout = self._layout
        reason = f"{type(error).__name__}: {error.message[:200]}"
        self.dropped[peer] = reason
        logging.warning(
            "AsyncGossipStrategy on %s: dropping peer %s (%s), which did "
            "not answer: %s",
            layout.task(layout.node),
            layout.task(peer),
            layout.address(peer),
            reason,
        )

    def live_nodes(self):
        return [
            k for k in range(self._layout.num_nodes) if k not in self.dropped
        ]


def _is_float(variable):
    return tf.as_dtype(variable.dtype).is_floating


class AsyncGossipStrategy(tf.distribute.Strategy):
    """Asynchronous decentralized parallel SGD (AD-PSGD) across workers.

    Every worker of a `TF_CONFIG` cluster runs the same script, with
    unmodified `compile` and `fit`. Each keeps its own model and trains at
    its own pace: after every step it atomically averages its model with one
    random neighbour of the topology and adds its optimizer's update (Lian et
    al. 2018). There is no global barrier: a slow worker slows nobody; a
    worker whose `fit` has ended is skipped by its peers (they check it
    again from time to time and take it back when it trains again), and one
    that crashed or became unreachable is dropped for good. Either way its
    peers keep training.

    ```python
    strategy = tfd.AsyncGossipStrategy("ring")   # reads TF_CONFIG
    with strategy.scope():
        model = make_model()
        model.compile(optimizer="adam", loss=..., metrics=[...])
    model.fit(my_shard_of_the_data, epochs=...)
    model.save(f"worker{strategy.node}.keras")   # this worker's own model
    strategy.average_weights(model)    # optional: every worker, exact mean
    ```

    Start the workers with `python -m tf_decentral.launch --workers 3 --
    python train.py`, or set `TF_CONFIG` on every host.

    How it runs: each worker process starts a TF server that holds its
    shared copy and its lock; its Python client connects to every server.
    Keras trains the local model (any optimizer, its slots local); after
    each step the strategy exchanges with a peer, server to server, and
    copies the result back. Exchanges are atomic: the sum of all copies
    changes only by the workers' own updates.

    Data: every worker trains on the dataset it is given, whole; unlike
    TF's multi-worker strategies this one does not auto-shard, because
    `evaluate` and `predict` use the same path and must see all the data
    (this worker's own model, no gathering across workers). Give each
    worker its own shard: `dataset.shard(strategy.num_workers,
    strategy.node)`, `x[strategy.node::strategy.num_workers]`, or
    `distribute_datasets_from_function`, whose `InputContext` names this
    worker's pipeline. `evaluate`, `predict`, `get_weights` and `save` use
    this worker's own model. With `steps_per_execution=k`, one exchange
    follows every `k` steps.

    Args:
        topology: A topology name (see `tf_decentral.topology.NAMES`), a
            `tf_decentral.topology.Topology`, or a doubly stochastic matrix,
            with one node per worker. Two workers are peers when they are
            neighbours in either direction in any round; the weights
            themselves are not used (an exchange always averages halves).
        cluster_resolver: A `tf.distribute.cluster_resolver.ClusterResolver`;
            `None` reads `TF_CONFIG`.
        seed: Seeds each worker's random choice of peers (worker `i` uses
            `seed + i`); `None` draws fresh randomness.
        communication_options: A `tf.distribute.experimental.
            CommunicationOptions`; its `timeout_seconds` (default 30) is how
            long an exchange may hold a peer's lock (a worker killed while
            holding one frees it after this) and how long a step waits for
            busy locks before keeping its update for the next step. Set it
            well above the time to move the model twice between workers.
        active_passive: The paper's split of a bipartite topology into
            active workers, which start every exchange (each with a random
            passive neighbour), and passive ones, which only apply their
            own updates and are averaged by their active neighbours: no two
            exchanges compete for one worker's own lock. `None` (default)
            splits when the topology is bipartite (an even ring, a torus
            with even sides), with the chief or worker 0 active; `True`
            requires it; `False` lets every worker start exchanges.

    Raises:
        ValueError: For no cluster, fewer than 2 workers, a topology whose
            size is not the number of workers, a disconnected topology, or
            `active_passive=True` with a topology that is not bipartite.

    __Known issues__: a worker that was dropped (it crashed, or did not
    answer) cannot rejoin, even restarted. On the active/passive split,
    passive workers, which never wait for the network, may finish first;
    their active neighbours then train their last steps alone. Keras'
    `gradient_accumulation_steps` and EMA work on the local model only.

    References:
        Lian, Zhang, Zhang, Liu. "Asynchronous Decentralized Parallel
        Stochastic Gradient Descent." ICML 2018.
    """

    def __init__(
        self,
        topology="ring",
        *,
        cluster_resolver=None,
        seed=None,
        communication_options=None,
        active_passive=None,
    ):
        if active_passive not in (None, True, False):
            raise TypeError(
                "`active_passive` must be None, True or False. Received: "
                f"active_passive={active_passive!r}"
            )
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int)
        ):
            raise TypeError(
                f"`seed` must be an integer or None. Received: seed={seed!r}"
            )
        options = make_communication_options(
            communication_options, DEFAULT_TIMEOUT_SECONDS
        )
        timeout = options.timeout_seconds or DEFAULT_TIMEOUT_SECONDS
        if not timeout > 0:
            raise ValueError(
                "`communication_options.timeout_seconds` must be positive. "
                f"Received: timeout_seconds={options.timeout_seconds!r}"
            )
        if cluster_resolver is None:
            cluster_resolver = _resolver_from_env()
        layout = runtime_lib.layout_from_resolver(cluster_resolver)
        if layout.num_nodes < 2:
            raise ValueError(
                "AsyncGossipStrategy needs at least 2 workers (chief and "
                "worker tasks), each averaging with the others. Received: a "
                f"cluster with {layout.num_nodes} worker(s): "
                f"{layout.cluster}. Use more workers, or train on one "
                "worker without a distribution strategy."
            )
        topo, adjacency = _resolve_topology(topology, layout.num_nodes)
        peers = np.flatnonzero(adjacency[layout.node]).tolist()
        colour = two_coloring(adjacency)
        if active_passive and colour is None:
            raise ValueError(
                "`active_passive=True` splits the workers into active and "
                "passive ones with every peer pair across the split, which "
                "needs a bipartite topology. Received: a topology with an "
                "odd cycle (e.g. a ring of an odd number of workers). Use "
                "an even ring, a torus with even sides, or "
                "active_passive=None."
            )
        if active_passive is None:
            active_passive = colour is not None
        active = not active_passive or colour[layout.node] == 0
        _keras_hooks.install()
        runtime = runtime_lib.get_runtime(layout, STARTUP_TIMEOUT_SECONDS)
        self._cluster_resolver = cluster_resolver
        extended = _AsyncGossipExtended(
            self, runtime, topo, peers, seed, timeout, active
        )
        super().__init__(extended)

    @property
    def cluster_resolver(self):
        """The cluster resolver describing the workers."""
        return self._cluster_resolver

    @property
    def topology(self) -> topology_lib.Topology:
        """The `Topology` whose nodes are the workers."""
        return self.extended._topology

    @property
    def num_workers(self) -> int:
        """The number of workers (gossip nodes), chief included."""
        return self.extended._layout.num_nodes

    @property
    def node(self) -> int:
        """This worker's node index: the chief first, then the workers."""
        return self.extended._layout.node

    @property
    def is_active(self) -> bool:
        """Whether this worker starts exchanges (False: a passive worker of
        the active/passive split, averaged by its active neighbours)."""
        return self.extended._active

    @property
    def peers(self) -> tuple:
        """The nodes this worker may exchange with."""
        return self.extended._peers

    @property
    def dropped_peers(self) -> dict:
        """Peers dropped after they stopped answering: node -> reason."""
        return dict(self.extended.dropped)

    @property
    def idle_peers(self) -> tuple:
        """Peers skipped now because their `fit` ended (they are tried again
        from time to time, and re-admitted when they train again)."""
        return tuple(sorted(self.extended.idle))

    @property
    def exchange_counts(self) -> dict:
        """Exchanges this worker started, by peer (`"solo"`: no live peer),
        plus `"busy"` (retries on busy locks), `"skipped"` (steps whose
        update waited for the next step), `"idle"` (attempts that found a
        peer idle) and `"served"` (exchanges peers started with this
        worker, read from its server)."""
        counts = dict(self.extended.exchanges)
        counts.update(self.extended.stats)
        counts["served"] = self.extended.locks.served_count()
        return counts

    def _shared(self, model):
        shared = self.extended.shared_model(model, create=False)
        if shared is None:
            raise RuntimeError(
                "AsyncGossipStrategy shares a model from its first `fit` "
                f"step on. Received: model {model.name!r}, which has not "
                "been trained with this strategy yet. Call `fit` first."
            )
        return shared

    def consensus_distance(self, model) -> float:
        """Returns `(1/m) sum_k ||x_k - x_bar||^2` over the live workers.

        `x_k` is worker `k`'s shared copy of the trainable parameters and
        `x_bar` the mean of the `m` copies of this worker and its peers that
        are still live. Copies are read one by one while the others train,
        so the value is approximate. A worker that does not answer is
        dropped.

        Args:
            model: A Keras model trained under this strategy.
        """
        shared = self._shared(model)
        groups = shared.trainable_groups
        copies = []
        for k in self.extended.live_nodes():
            try:
                copy = shared.read_copy(k)
            except _PEER_ERRORS as e:
                self.extended._drop(k, e)
                continue
            copies.append(
                np.concatenate([copy[g].astype(np.float64) for g in groups])
            )
        stacked = np.stack(copies)
        mean = stacked.mean(axis=0, keepdims=True)
        return float(np.square(stacked - mean).sum() / len(copies))

    def average_weights(self, model, timeout: float = 600.0) -> None:
        """Sets every worker's model to the exact average of all workers'.

        Every worker must call it (like a collective), after training: it
        waits for all of them, averages their shared copies (trainable and
        non-trainable floating-point weights, not the optimizer's slots), and
        sets each worker's local model and shared copy to the average.

        Args:
            model: A Keras model trained under this strategy.
            timeout: Seconds to wait for the other workers.

        Raises:
            RuntimeError: If a worker is dropped, unreachable, or does not
                call it within `timeout`.
        """
        shared = self._shared(model)
        extended = self.extended
        nodes = range(self.num_workers)
        what = "AsyncGossipStrategy.average_weights"
        if extended.dropped:
            raise RuntimeError(
                f"{what} needs every worker, but "
                f"{[extended._layout.task(k) for k in extended.dropped]} "
                "were dropped during training."
            )
        extended.locks.barrier(nodes, timeout, what)
        totals = None
        for k in nodes:
            copy = shared.read_copy(k)
            if totals is None:
                totals = [c.astype(np.float64) for c in copy]
            else:
                totals = [t + c for t, c in zip(totals, copy)]
        mean = [
            (t / self.num_workers).astype(c.dtype) for t, c in zip(totals, copy)
        ]
        extended.locks.barrier(nodes, timeout, what)
        shared.write_own_copy(mean)
        shared.set_local(mean)
        extended.locks.barrier(nodes, timeout, what)
