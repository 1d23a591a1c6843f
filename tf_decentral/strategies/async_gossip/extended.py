"""`AsyncGossipExtended`: the state and work of an `AsyncGossipStrategy`.

One per worker process. It owns the `Runtime` (this worker's server and
connected client), the `Locks`, one `SharedModel` per Keras model, and the
`PeerSchedule` (which peer to exchange with next). Keras reaches it through
the hooks of `tf_decentral.strategies._keras_hooks`: gradients stay local,
the optimizer updates the local model, and `keras_wrap_train_function`
follows every train step with one exchange (`exchange_after_step`). The
public `AsyncGossipStrategy` only validates its arguments and delegates
here.
"""

import collections
import contextlib
import threading
import time
import weakref

import numpy as np
import tensorflow as tf
from absl import logging

from tf_decentral import _tf_private
from tf_decentral.strategies import _keras_hooks
from tf_decentral.strategies._collective import PEER_STATE_LOST_ERRORS
from tf_decentral.strategies.async_gossip import checkpoint as checkpoint_lib
from tf_decentral.strategies.async_gossip import exchange as exchange_lib
from tf_decentral.strategies.async_gossip import pacing
from tf_decentral.strategies.async_gossip import rejoin

STARTUP_TIMEOUT_SECONDS = 600.0
"""How long a worker waits for the others to connect and to start `fit`."""


class AsyncGossipExtended(
    _tf_private.OneDeviceExtended,
    _keras_hooks.OptimizerHooks,
    pacing.PacingMixin,
    rejoin.RejoinMixin,
):
    """Implementation of `AsyncGossipStrategy` on one worker.

    Args:
        container: The `AsyncGossipStrategy`.
        runtime: This process's `runtime.Runtime`.
        topology: The `Topology` whose nodes are the workers.
        schedule: This worker's `peers.PeerSchedule`.
        timeout: Seconds an exchange may hold a peer's lock, and a step may
            retry busy locks.
        cluster_resolver: The cluster resolver describing the workers.
        overlap: Whether an active worker's exchange runs while its next
            step trains (`start_exchange`).
        serve_shares: For a passive worker, active neighbour -> the
            exchanges it starts with this worker per step of its own
            (`1 / degree`; they sum to 1 on an even ring or torus); None:
            do not pace (an active worker, or no split).

    Attributes:
        runtime, layout, topology, schedule, timeout, cluster_resolver: As
            given (`layout` is the runtime's).
        locks: The cluster's `exchange.Locks`.
        hook_counts: Keras hooks that fired, by name.
        exchanges: Exchanges this worker started, by peer (`"solo"`).
        stats: `"busy"`, `"skipped"` and `"idle"` counts (see
            `exchange_counts`).
    """

    def __init__(
        self,
        container,
        runtime,
        topology,
        schedule,
        timeout,
        cluster_resolver,
        serve_shares=None,
        overlap=False,
    ):
        super().__init__(container, runtime.client_device)
        self.serve_shares = serve_shares
        self.overlap = bool(overlap)
        self._pending = None  # The exchange in flight (see start_exchange).
        self._steps = 0  # Exchanges (train function calls) in this fit.
        self._steps_in_all = 0  # Training steps in all fits (`note_step`).
        # Pacing of a passive worker: the neighbours it waits for, their
        # exchanges per step, and (served count, steps) when they changed.
        self._pacing = False
        self._pace_peers = frozenset()
        self._pace_rate = 0.0
        self._pace_base = (0, 0)
        self.hook_counts = collections.Counter()
        self.runtime = runtime
        self.layout = runtime.layout
        self.topology = topology
        self.schedule = schedule
        self.timeout = float(timeout)
        self.cluster_resolver = cluster_resolver
        self.locks = exchange_lib.Locks(self.layout, self.timeout)
        self._models = weakref.WeakKeyDictionary()
        self._num_models = 0
        self._fits = 0
        self._restores = 0
        self.stats = collections.Counter()
        self.exchanges = collections.Counter()

    @property
    def client_device(self) -> str:
        """The device of this worker's Keras model."""
        return self.runtime.client_device

    def dataset_input_contexts(self):
        """One input pipeline per worker: this worker's (no auto-sharding
        by the strategy; `dataset_fn` shards with the context)."""
        return [
            tf.distribute.InputContext(
                num_input_pipelines=self.layout.num_nodes,
                input_pipeline_id=self.layout.node,
                num_replicas_in_sync=1,
            )
        ]

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
            self.exchange_after_step(shared)
            return logs

        return train_function_with_exchange

    def explain_communication_error(self, error):
        layout = self.layout
        return (
            f"Asynchronous gossip on {layout.task(layout.node)} failed: "
            f"{type(error).__name__}. Its peers "
            f"{[layout.task(j) for j in self.schedule.peers]} are dropped one"
            " by one when they stop answering; this error came from "
            "elsewhere (this worker's own server or model). TensorFlow's "
            "error: " + getattr(error, "message", str(error))[:2000]
        )

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
                self._steps = 0
                self._pacing = self.serve_shares is not None
                if self._pacing:
                    self._rebase_pace(set(self.serve_shares), 0)
            yield
            if self._fits == 1:
                self.finish_exchange()
                self.serve_at_end()
        finally:
            self._fits -= 1
            if self._fits == 0:
                self._finish_quietly()
                self._stop_training(model)

    def _finish_quietly(self):
        """After a `fit` that raised: waits for the exchange in flight and
        takes it in, without masking the `fit`'s error by its own."""
        try:
            self.finish_exchange()
        except Exception as e:  # noqa: BLE001 - logged; fit's error wins
            logging.warning(
                "AsyncGossipStrategy: the exchange in flight when fit "
                "stopped failed too: %s: %s",
                type(e).__name__,
                e,
            )

    def _stop_training(self, model):
        me = self.layout.task(self.layout.node)
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
                    self.timeout,
                )
        except tf.errors.OpError as e:
            logging.warning(
                "AsyncGossipStrategy on %s: could not mark it idle after fit"
                " (%s: %s); its peers drop it when it stops answering.",
                me,
                type(e).__name__,
                e.message[:200],
            )

    # Checkpoints (see _keras_hooks.TrainFunctionHooks and checkpoint.py) ----

    def keras_checkpoint_writer(self) -> bool:
        """Node 0 (the chief, else worker 0) writes BackupAndRestore's
        backup and ModelCheckpoint's files, of its own model; the others
        write into scratch directories that are removed."""
        return self.layout.node == 0

    def keras_backup_read_by_writer_only(self) -> bool:
        """Only node 0 reads the backup; the others take its state."""
        return True

    def keras_backup_restored(self, model):
        """At a model's first `fit` in this process, every worker takes the
        training state node 0 restored: weights, optimizer variables and
        the epoch to resume at (see `checkpoint.py`).

        In a later `fit` of the same model the workers are already
        averaging their copies: each keeps its own state, and a backup
        node 0 restored then enters its shared copy as its own update at
        its next exchange.
        """
        if self.shared_model(model, create=False) is not None:
            self.hook_counts["restore_kept_local"] += 1
            return
        layout = self.layout
        state = checkpoint_lib.TrainingState(
            model, layout.server_device(0), f"r{self._restores}"
        )
        self._restores += 1
        if layout.node == 0:
            self.hook_counts["restore_published"] += 1
            state.publish()
        else:
            self.hook_counts["restore_taken"] += 1
            state.wait_and_take(
                STARTUP_TIMEOUT_SECONDS,
                who=layout.task(layout.node),
                owner=layout.task(0),
            )

    # Shared state and exchanges --------------------------------------------

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

    def trained_shared_model(self, model):
        """Returns `model`'s `SharedModel`; raises if it has none yet."""
        shared = self.shared_model(model, create=False)
        if shared is None:
            raise RuntimeError(
                "AsyncGossipStrategy shares a model from its first `fit` "
                f"step on. Received: model {model.name!r}, which has not "
                "been trained with this strategy yet. Call `fit` first."
            )
        return shared

    def exchange(self, shared):
        """One exchange with a live peer (the schedule's for this step);
        retries while locks are busy, for at most the timeout (then the
        delta waits for the next step). A peer found idle is skipped until
        its next check. A passive worker applies its update (solo), then
        waits for its active neighbours (`pace`).

        Synchronous; Keras' train function calls `exchange_after_step`.
        """
        step = self._steps
        self._steps += 1
        done = self._exchange(shared, step) is not None
        if self._pacing:
            self.pace(step + 1)
        return done

    def exchange_after_step(self, shared):
        """The exchange that follows a training step: with `overlap`, an
        active worker's runs in the background while the next step trains
        (`start_exchange`), after the previous one's result is taken in
        (`finish_exchange`); else `exchange`."""
        self.note_step()
        if not (self.overlap and self.schedule.active):
            self.readmit_restarted_peers()
            return self.exchange(shared)
        step = self._steps
        self._steps += 1
        self.finish_exchange()
        self.readmit_restarted_peers()
        self.start_exchange(shared, step)
        return True

    def start_exchange(self, shared, step):
        """Starts the exchange of a snapshot of the local model on a
        background thread: the next training step computes its gradient on
        the model before this average, as the paper's workers compute
        while they average, so a worker runs at most one step ahead of its
        last average."""
        snapshot = shared.snapshot()
        box = {}

        def run():
            try:
                box["fresh"] = self._exchange(shared, step, snapshot)
            except BaseException as e:  # noqa: BLE001 - re-raised by finish
                box["error"] = e

        thread = threading.Thread(
            target=run, name="AsyncGossipStrategy-exchange", daemon=True
        )
        thread.start()
        self._pending = (thread, box, shared, snapshot)

    def finish_exchange(self):
        """Waits for the exchange in flight, if any, and takes its result
        into the local model (`SharedModel.apply_detached`); re-raises its
        error."""
        if self._pending is None:
            return
        thread, box, shared, snapshot = self._pending
        thread.join()
        self._pending = None
        if "error" in box:
            raise box["error"]
        fresh = box["fresh"]
        if fresh is not None:  # None: the exchange timed out, skipped
            shared.apply_detached(fresh, snapshot)
            self.hook_counts["overlapped"] += 1

    def _exchange(self, shared, step, snapshot=None):
        """Retries until an exchange is done; returns None if it was not
        (the timeout passed), else True, or with `snapshot` (a detached
        exchange) the fresh buffers to apply."""
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        while True:
            peer = self.schedule.choose(step)
            token = self.locks.next_token()
            try:
                if snapshot is None:
                    status, fresh = shared.exchange(peer, token), True
                else:
                    status, fresh = shared.exchange_detached(
                        peer, token, snapshot
                    )
            except PEER_STATE_LOST_ERRORS as e:
                self._release(shared, token)
                if peer is None:
                    raise
                self.drop(peer, e)
                continue
            if status == "done":
                self.exchanges[peer if peer is not None else "solo"] += 1
                self.schedule.readmit(peer)
                return fresh
            if status == "idle":
                self.schedule.mark_idle(peer)
                self.stats["idle"] += 1
                continue
            self.stats["busy"] += 1
            if time.monotonic() >= deadline:
                self.stats["skipped"] += 1
                return None
            time.sleep(self.schedule.jitter(pause))
            pause = min(2 * pause, 0.05)

    def flush(self, shared):
        """Adds the local model's pending update to the shared copy and
        copies the result back (a solo exchange); returns whether done."""
        deadline = time.monotonic() + self.timeout
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

    def drop(self, peer, error):
        """Drops `peer` for good after it raised `error`, and logs why."""
        layout = self.layout
        reason = f"{type(error).__name__}: {error.message[:200]}"
        self.schedule.drop(peer, reason)
        logging.warning(
            "AsyncGossipStrategy on %s: dropping peer %s (%s), which did "
            "not answer: %s",
            layout.task(layout.node),
            layout.task(peer),
            layout.address(peer),
            reason,
        )

    def exchange_counts(self) -> dict:
        """See `AsyncGossipStrategy.exchange_counts`."""
        counts = dict(self.exchanges)
        counts.update(self.stats)
        counts["served"] = self.locks.served_count()
        return counts

    # Whole-cluster views -----------------------------------------------------

    def consensus_distance(self, model) -> float:
        """See `AsyncGossipStrategy.consensus_distance`."""
        shared = self.trained_shared_model(model)
        groups = shared.trainable_groups
        copies = []
        for k in self.schedule.live_nodes(self.layout.num_nodes):
            try:
                copy = shared.read_copy(k)
            except PEER_STATE_LOST_ERRORS as e:
                self.drop(k, e)
                continue
            copies.append(
                np.concatenate([copy[g].astype(np.float64) for g in groups])
            )
        stacked = np.stack(copies)
        mean = stacked.mean(axis=0, keepdims=True)
        return float(np.square(stacked - mean).sum() / len(copies))

    def average_weights(self, model, timeout: float) -> None:
        """See `AsyncGossipStrategy.average_weights`."""
        shared = self.trained_shared_model(model)
        num_nodes = self.layout.num_nodes
        nodes = range(num_nodes)
        what = "AsyncGossipStrategy.average_weights"
        dropped = self.schedule.dropped
        if dropped:
            raise RuntimeError(
                f"{what} needs every worker, but "
                f"{[self.layout.task(k) for k in dropped]} "
                "were dropped during training."
            )
        self.locks.barrier(nodes, timeout, what)
        totals = None
        for k in nodes:
            copy = shared.read_copy(k)
            if totals is None:
                totals = [c.astype(np.float64) for c in copy]
            else:
                totals = [t + c for t, c in zip(totals, copy)]
        mean = [(t / num_nodes).astype(c.dtype) for t, c in zip(totals, copy)]
        self.locks.barrier(nodes, timeout, what)
        shared.write_own_copy(mean)
        shared.set_local(mean)
        self.locks.barrier(nodes, timeout, what)


def _is_float(variable):
    return tf.as_dtype(variable.dtype).is_floating
