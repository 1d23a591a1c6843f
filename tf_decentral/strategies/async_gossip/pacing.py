"""How a passive `AsyncGossipStrategy` worker keeps pace with its actives.

On the active/passive split (see `AsyncGossipStrategy`) a passive worker's
step needs no network: with cheap compute it would race through its steps
alone and finish long before its active neighbours, which would then train
their last steps with nobody to average with. So a passive worker waits,
after each step, until its actives have averaged with it about once per
step (`PacingMixin.pace`), and at the end of its `fit` stays averageable
until they have finished (`serve_until_neighbours_finish`).
"""

import time

from tf_decentral.strategies._collective import PEER_STATE_LOST_ERRORS

PASSIVE_LEAD_STEPS = 4
"""How many steps a passive worker may run ahead of the exchanges its active
neighbours start with it (see `PacingMixin.pace`)."""

_PACE_POLL_SECONDS = 0.002
_PACE_CHECK_SECONDS = 0.25


class PacingMixin:
    """The pacing of a passive worker, for `AsyncGossipExtended`.

    Uses the extended's `locks`, `schedule`, `serve_shares`, `stats`,
    `timeout` and `drop`, and keeps its state in `_pacing`, `_pace_peers`,
    `_pace_rate` and `_pace_base`.
    """

    def pace(self, steps):
        """Waits until this passive worker's active neighbours have started
        about one exchange with it per step of its `fit`, at most
        `PASSIVE_LEAD_STEPS` behind `steps`.

        So a passive worker is averaged about once per step, as in the
        paper, instead of racing through its steps alone when its compute
        is cheaper than its neighbours' exchanges. Every
        `_PACE_CHECK_SECONDS` of waiting it reads which active neighbours
        still train: when that changes (a `fit` ended, a neighbour was
        dropped) it expects only the remaining ones' share from then on,
        and with none left it stops pacing for the rest of the `fit`. It
        waits at most the timeout per step.
        """
        start = time.monotonic()
        next_check = start + _PACE_CHECK_SECONDS
        waited = False
        while True:
            served_base, step_base = self._pace_base
            target = self._pace_rate * (steps - step_base) - PASSIVE_LEAD_STEPS
            served = self.locks.served_count() - served_base
            if served >= target:
                break
            waited = True
            now = time.monotonic()
            if now - start >= self.timeout:
                self.stats["pace_timeouts"] += 1
                break
            if now >= next_check:
                next_check = now + _PACE_CHECK_SECONDS
                training = self._training_neighbours()
                if not training:
                    self._pacing = False
                    break
                if training != self._pace_peers:
                    self._rebase_pace(training, steps - 1)
                    continue
            time.sleep(_PACE_POLL_SECONDS)
        self.stats["paced"] += int(waited)

    def serve_until_neighbours_finish(self):
        """At the end of a passive worker's `fit`: stays averageable until
        its active neighbours' `fit`s have ended too.

        So the actives' last steps still average (the passive worker's
        copy keeps taking their exchanges) and the model this worker keeps
        (its copy, read back after `fit`) has them. It gives up after the
        timeout without a new exchange.
        """
        last = self.locks.served_count()
        deadline = time.monotonic() + self.timeout
        while self._training_neighbours():
            time.sleep(_PACE_CHECK_SECONDS / 5)
            served = self.locks.served_count()
            if served > last:
                last, deadline = served, time.monotonic() + self.timeout
            elif time.monotonic() > deadline:
                self.stats["pace_timeouts"] += 1
                return
        self.stats["waited_at_end"] += 1

    def _rebase_pace(self, peers, steps):
        self._pace_peers = frozenset(peers)
        self._pace_rate = sum(self.serve_shares[j] for j in peers)
        self._pace_base = (self.locks.served_count(), steps)

    def _training_neighbours(self):
        """The live neighbours that train; drops those that do not answer."""
        training = set()
        for j in self.schedule.peers:
            if j in self.schedule.dropped:
                continue
            try:
                if self.locks.read_training([j])[0]:
                    training.add(j)
            except PEER_STATE_LOST_ERRORS as e:
                self.drop(j, e)
        return frozenset(training)
