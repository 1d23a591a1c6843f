"""How a restarted `AsyncGossipStrategy` worker is taken back by its peers.

A worker that crashed is dropped by the neighbours that tried to exchange
with it (`AsyncGossipExtended.drop`); they train on. When it is restarted
at the same address (same `TF_CONFIG`, same program), it rejoins:

1. Its new process starts a fresh server and, like every worker but node 0
   at start-up, waits for the go flag on that server before its client
   connects (`runtime.Runtime`): a server's first eager context must be its
   own client's alone (research/multiclient_segfault.md).
2. A background thread of each live neighbour probes its dropped peers
   every `REJOIN_CHECK_SECONDS`: `task_is_alive` (at once, no wait), then,
   through its own server's TF1 session (no eager context on the fresh
   server), sets the restarted server's go flag, and reads whether the
   restarted worker's models are ready.
3. The restarted worker connects, and at its first `fit` step starts its
   shared copy from a peer's current copy (`SharedModel.initialize`: node
   0's, or for node 0 the first ready peer's), marks it ready, and trains.
4. The neighbour, between two of its steps (no exchange in flight), calls
   TF's `update_server_def` (`_tf_private.reattach_restarted_task`: TF
   makes a new context on each task whose incarnation changed), re-creates
   its handles to the peer's locks and copies and the exchange functions
   that captured them, and readmits the peer (`exchange_counts()
   ["rejoined"]`).

The restarted worker's `fit` starts over (its epochs count from 0, unless
its program resumes otherwise); its optimizer state is new. Only neighbours
take it back (the others never exchange with it); `average_weights` needs
every worker to see every other, so call it only in a job where no worker
was dropped.
"""

import threading
import time

import tensorflow as tf
from absl import logging

from tf_decentral import _tf_private

REJOIN_CHECK_SECONDS = 1.0
"""How often a worker probes its dropped peers for a restart."""


class RejoinMixin:
    """The rejoin of restarted peers, for `AsyncGossipExtended`.

    Uses the extended's `runtime`, `layout`, `schedule`, `locks`, `stats`
    and `_models` (its `SharedModel`s); keeps its state in `_rejoin`.
    """

    def _shared_models(self):
        return list(self._models.values())

    def _rejoin_state(self):
        state = getattr(self, "_rejoin", None)
        if state is None:
            state = {"lock": threading.Lock(), "ready": set(), "thread": None}
            self._rejoin = state
        return state

    def readmit_restarted_peers(self):
        """Takes back the dropped peers that restarted and are ready.

        Call it between steps, with no exchange in flight: it replaces the
        handles and exchange functions of those peers. Starts the prober
        thread when a peer is dropped.
        """
        if not self.schedule.dropped:
            return
        state = self._rejoin_state()
        with state["lock"]:
            ready, state["ready"] = state["ready"], set()
            thread = state["thread"]
            if thread is None or not thread.is_alive():
                thread = threading.Thread(
                    target=self._probe_dropped_peers,
                    name="AsyncGossipStrategy-rejoin",
                    daemon=True,
                )
                state["thread"] = thread
                thread.start()
        if ready:
            self._readmit(sorted(ready))

    def _readmit(self, peers):
        layout = self.layout
        _tf_private.reattach_restarted_task()
        for k in peers:
            self.locks.reattach(k)
            for shared in self._shared_models():
                shared.reattach(k)
            self.schedule.readmit_dropped(k)
            self.stats["rejoined"] += 1
            logging.warning(
                "AsyncGossipStrategy on %s: peer %s (%s) restarted and is "
                "back; exchanging with it again.",
                layout.task(layout.node),
                layout.task(k),
                layout.address(k),
            )

    def _probe_dropped_peers(self):
        """The prober thread: runs while some peer is dropped."""
        state = self._rejoin_state()
        while True:
            dropped = sorted(self.schedule.dropped)
            if not dropped:
                return
            for k in dropped:
                try:
                    if self._restarted_and_ready(k):
                        with state["lock"]:
                            state["ready"].add(k)
                except tf.errors.OpError:
                    pass  # Down, or going down: probe again later.
            time.sleep(REJOIN_CHECK_SECONDS)

    def _restarted_and_ready(self, k) -> bool:
        """Whether dropped peer `k` runs again with every model ready; lets
        its client connect if its server is new (no go flag)."""
        runtime = self.runtime
        if not _tf_private.task_is_alive(runtime.task_name(k)):
            return False
        if not runtime.flag_via_server(k):
            runtime.flag_via_server(k, set_it=True)
            return False
        models = self._shared_models()
        return bool(models) and all(
            runtime.flag_via_server(k, shared.ready_name) for shared in models
        )
