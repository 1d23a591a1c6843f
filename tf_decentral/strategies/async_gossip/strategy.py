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
start every exchange, passive ones only apply their own updates. An active
worker's partner at step `t` is its neighbour across the edge of colour
`t mod d` of an edge colouring of the graph (`topology.edge_coloring`, `d`
the largest degree; the next colour's if that neighbour's `fit` has ended),
so actives stepping together never pick the same passive worker and each
passive worker is averaged about once per step; a passive worker waits
until its active neighbours have averaged with it about once per step of
its own, at most `pacing.PASSIVE_LEAD_STEPS` steps ahead, so it does not
race through its steps alone when its compute is cheaper than an exchange.
At the end of its `fit` a passive worker stays averageable until its
active neighbours' `fit`s have ended, so every active step averages to
the end; each worker then keeps its own copy, averaged with its neighbours
until their last steps. Without the split (every worker active: an odd
ring, `active_passive=False`) a worker whose steps are done stays
averageable while a neighbour that still trains has taken fewer steps in
all than it has, so a worker that fell behind still averages its last
steps instead of training them alone; this is no barrier (a neighbour that
is ahead, or whose `fit` has ended, is not waited for), and a finished
worker's process waits at exit for its peers anyway. For one converged
model (the paper's output, the mean of the copies), call `average_weights`
on every worker after `fit`: it gives every worker the exact mean.

Vocabulary: a *node* is a worker (the chief first, then the workers, TF's
order); its *shared copy* `x_i` lives on its own TF server; its *local
model* is the Keras model on its client device, a cache of `x_i` that Keras
trains.

This module is the thin public class: it validates the arguments, resolves
the topology and starts the runtime, then delegates to
`extended.AsyncGossipExtended`, which holds the state. The rest of the
package: `peers.py` (which peer next; idle and dropped peers),
`pacing.py` (a passive worker keeping pace with its actives),
`exchange.py` (the locks and the atomic exchange), `runtime.py` (the
server and client of each worker and their start-up order),
`checkpoint.py` (one checkpoint writer; the state a resumed job starts
from).

References:
    Lian, Zhang, Zhang, Liu. "Asynchronous Decentralized Parallel Stochastic
    Gradient Descent." ICML 2018.
"""

import numpy as np
import tensorflow as tf

from tf_decentral import topology as topology_lib
from tf_decentral.strategies import _keras_hooks
from tf_decentral.strategies._collective import (
    communication_options as make_communication_options,
)
from tf_decentral.strategies.async_gossip import extended as extended_lib
from tf_decentral.strategies.async_gossip import peers as peers_lib
from tf_decentral.strategies.async_gossip import runtime as runtime_lib

DEFAULT_TIMEOUT_SECONDS = 30.0
"""How long an exchange may hold a peer's lock, and a step may wait for one,
when `communication_options` gives no timeout."""


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


def _check_connected(adjacency, spec):
    """Raises a clear error if the pairs of `adjacency` leave a node apart."""
    components = topology_lib.connected_components(adjacency)
    if len(components) > 1:
        apart = sorted(k for c in components[1:] for k in c)
        raise ValueError(
            "`topology` must connect every worker to every other through "
            "neighbours, or the workers never agree on one model. "
            f"Received: a topology in which workers {components[0]} never "
            f"exchange, directly or indirectly, with workers {apart} "
            f"(topology={spec!r})."
        )


def _resolve_topology(spec, num_nodes):
    """Returns the `Topology` of `spec` and its undirected peer graph."""
    if not isinstance(spec, str | topology_lib.Topology):
        # Check raw weights first: `resolve` rejects a disconnected mixing
        # matrix with a less helpful message.
        try:
            weights = np.asarray(spec, dtype=float)
        except (TypeError, ValueError):
            weights = None
        if (
            weights is not None
            and weights.ndim in (2, 3)
            and weights.shape[-1] == weights.shape[-2] == num_nodes
        ):
            _check_connected(topology_lib.adjacency(weights), spec)
    topology = topology_lib.resolve(spec, num_nodes)
    adjacency = topology_lib.adjacency(topology)
    _check_connected(adjacency, spec)
    return topology, adjacency


def _check_types(seed, active_passive, overlap):
    if not isinstance(overlap, bool):
        raise TypeError(
            f"`overlap` must be True or False. Received: overlap={overlap!r}"
        )
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


def _split_schedule(adjacency, node, active_passive):
    """Returns `(rounds, serve_shares)` of `node` on the active/passive
    split.

    `rounds`: the peer of each round of an edge colouring of the bipartite
    graph (None where `node` has no edge of that colour), so that active
    workers stepping together pick distinct passive partners.
    `serve_shares`: neighbour `a` -> the exchanges per step of its own that
    `a` starts with a passive `node`, `1 / degree(a)`. `(None, None)`
    without the split.
    """
    if not active_passive:
        return None, None
    colours = topology_lib.edge_coloring(adjacency)
    by_colour = {int(c): j for j, c in enumerate(colours[node]) if c >= 0}
    rounds = [by_colour.get(c) for c in range(int(colours.max()) + 1)]
    degree = adjacency.sum(axis=1)
    shares = {
        int(j): 1.0 / int(degree[j]) for j in np.flatnonzero(adjacency[node])
    }
    return rounds, shares


class AsyncGossipStrategy(tf.distribute.Strategy):
    """Asynchronous decentralized parallel SGD (AD-PSGD) across workers.

    Every worker of a `TF_CONFIG` cluster runs the same script, with
    unmodified `compile` and `fit`. Each keeps its own model and trains at
    its own pace: after every step it atomically averages its model with one
    neighbour of the topology (a random one; on the active/passive split,
    the schedule's) and adds its optimizer's update (Lian et al. 2018).
    There is no global barrier: a slow worker slows nobody; a worker whose
    `fit` has ended is skipped by its peers (they check it
    again from time to time and take it back when it trains again), and one
    that crashed or became unreachable is dropped. Either way its peers
    keep training; a dropped worker restarted at the same address (same
    `TF_CONFIG`, same program) is taken back by its neighbours and starts
    from a peer's copy (`rejoin.py`).

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

    Checkpoints: every worker may run the same script with
    `keras.callbacks.BackupAndRestore(backup_dir)` and `ModelCheckpoint`
    given one shared path. Node 0 (the chief, or worker 0) alone writes
    there, its own model and optimizer state (with no global barrier there
    is no consensus average to write; node 0's model is one of the copies
    the run averages); the others write into scratch directories that are
    removed, and never read the folder. At the first `fit` of a restarted
    job, node 0 restores its backup and every other worker takes node 0's
    weights, optimizer variables and epoch from node 0's server: all resume
    at the same epoch from node 0's last backup (one folder per task works
    the same way). Stop every worker before restarting: a worker whose peer
    died trains on, and node 0 removes the backup when its `fit` ends.

    End of the program: at interpreter exit every worker keeps its server
    up until each peer has reached its own exit (or cannot be reached), at
    most `runtime.EXIT_TIMEOUT_SECONDS` (600 s), and says so in its log
    after 2 s: its peers' programs still use that server (TF registers each
    new TF function, e.g. of `evaluate`, on every server of the cluster, and
    crashes when a server vanishes meanwhile).

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
            active workers, which start every exchange (each with the
            passive neighbour of the step's round, see above), and passive
            ones, which apply their own updates and wait to be averaged by
            their active neighbours about once per step: no two exchanges
            compete for one worker's own lock. `None` (default)
            splits when the topology is bipartite (an even ring, a torus
            with even sides), with the chief or worker 0 active; `True`
            requires it; `False` lets every worker start exchanges.
        overlap: Whether a worker's exchange runs while its next step
            trains, as the paper's workers average while they compute:
            step `t + 1`'s gradient is then computed on the model before
            exchange `t`'s average (a worker is at most one step ahead of
            its last average), and the step costs about the larger of its
            compute and one exchange instead of their sum; an error of the
            exchange is raised at the next step. `False` (default): each
            step waits for its exchange, Algorithm 1's sequential form.
            Measured (`bench/`, 8 workers, compute-bound steps): the
            active step 1.01x one-peer D-PSGD's with it, 1.55-1.65x
            without.
            (The worker crashes once blamed on `overlap` were TF's
            MultiDeviceIterator teardown race at Keras' iterator reset,
            which hit runs without it too; this strategy no longer uses
            that iterator, see `_tf_private.OneDeviceExtended`.)

    Raises:
        ValueError: For no cluster, fewer than 2 workers, a topology whose
            size is not the number of workers, a disconnected topology, or
            `active_passive=True` with a topology that is not bipartite.

    __Known issues__: only a dropped worker's neighbours take it back when
    it restarts, so `average_weights` fails on a worker that saw a peer
    dropped. Keras' `gradient_accumulation_steps` and EMA work on the local
    model only.

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
        overlap=False,
    ):
        _check_types(seed, active_passive, overlap)
        # A finite default; 0 or a negative timeout is a ValueError.
        options = make_communication_options(
            communication_options, DEFAULT_TIMEOUT_SECONDS
        )
        timeout = options.timeout_seconds
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
        colour = topology_lib.two_coloring(adjacency)
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
        rounds, serve_shares = _split_schedule(
            adjacency, layout.node, active_passive
        )
        _keras_hooks.install()
        runtime = runtime_lib.get_runtime(
            layout, extended_lib.STARTUP_TIMEOUT_SECONDS
        )
        schedule = peers_lib.PeerSchedule(
            np.flatnonzero(adjacency[layout.node]).tolist(),
            active=active,
            rounds=rounds if active else None,
            seed=None if seed is None else seed + layout.node,
        )
        super().__init__(
            extended_lib.AsyncGossipExtended(
                self,
                runtime,
                topo,
                schedule,
                timeout,
                cluster_resolver,
                serve_shares=None if active else serve_shares,
                overlap=overlap,
            )
        )

    @property
    def cluster_resolver(self):
        """The cluster resolver describing the workers."""
        return self.extended.cluster_resolver

    @property
    def topology(self) -> topology_lib.Topology:
        """The `Topology` whose nodes are the workers."""
        return self.extended.topology

    @property
    def num_workers(self) -> int:
        """The number of workers (gossip nodes), chief included."""
        return self.extended.layout.num_nodes

    @property
    def node(self) -> int:
        """This worker's node index: the chief first, then the workers."""
        return self.extended.layout.node

    @property
    def is_active(self) -> bool:
        """Whether this worker starts exchanges (False: a passive worker of
        the active/passive split, averaged by its active neighbours)."""
        return self.extended.schedule.active

    @property
    def peers(self) -> tuple:
        """The nodes this worker may exchange with."""
        return self.extended.schedule.peers

    @property
    def dropped_peers(self) -> dict:
        """Peers dropped after they stopped answering: node -> reason."""
        return dict(self.extended.schedule.dropped)

    @property
    def idle_peers(self) -> tuple:
        """Peers skipped now because their `fit` ended (they are tried again
        from time to time, and re-admitted when they train again)."""
        return tuple(sorted(self.extended.schedule.idle))

    @property
    def exchange_counts(self) -> dict:
        """Exchanges this worker started, by peer (`"solo"`: a passive
        worker's step, or no live peer), plus `"busy"` (retries on busy
        locks), `"skipped"` (steps whose update waited for the next step),
        `"idle"` (attempts that found a peer idle), `"served"` (exchanges
        peers started with this worker, read from its server), and for a
        passive worker `"paced"` (steps after which it waited for its
        active neighbours), `"waited_at_end"` (`fit`s at whose end it
        waited for its neighbours to finish; without the split, for those
        that had taken fewer steps) and
        `"pace_timeouts"` (waits cut at the timeout), and `"rejoined"`
        (dropped peers taken back after their restart)."""
        return self.extended.exchange_counts()

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
        return self.extended.consensus_distance(model)

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
        self.extended.average_weights(model, timeout)
