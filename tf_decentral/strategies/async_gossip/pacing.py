"""How a passive `AsyncGossipStrategy` worker keeps pace with its actives.

On the active/passive split (see `AsyncGossipStrategy`) a passive worker's
step needs no network: with cheap compute it would race through its steps
alone and finish long before its active neighbours, which would then train
their last steps with nobody to average with. So a passive worker waits,
after each step, until its actives have averaged with it about once per
step (`PacingMixin.pace`), and at the end of its `fit` stays averageable
until they have finished (`serve_until_neighbours_finish`). Without the
split every worker starts exchanges; at the end of its `fit` a worker stays
averageable while a neighbour that trains has taken fewer steps in all than
it has (`serve_at_end`).
"""

import time

from tf_decentral.strategies._collective import PEER_STATE_LOST_ERRORS

PASSIVE_LEAD_STEPS = 4
"""How many steps a passive worker may run ahead of the exchanges its active
neighbours start with it (see `PacingMixin.pace`)."""

_PACE_POLL_SECONDS = 0.002
_PACE_CHECK_SECONDS = 0.25


class PacingMixin:
    """The pacing of a passive worker and the end of a `fit`, for
    `AsyncGossipExtended`.

    Uses the extended's `locks`, `schedule`, `serve_shares`, `stats`,
    `timeout` and `drop`, and keeps its state in `_pacing`, `_pace_peers`,
    `_pace_rate`, `_pace_base` and `_steps_in_all`.
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

    def note_step(self):
        """Publishes this worker's steps in all, at the end of a training
        step (peers that finished read it, see `serve_at_end`)."""
        self._steps_in_all += 1
        self.locks.set_steps(self._steps_in_all)

    def serve_at_end(self):
        """At the end of a `fit`, its steps done: a passive worker stays
        averageable until its active neighbours have finished; without the
        split, a worker stays averageable while a neighbour that still
        trains has taken fewer steps in all than this worker. So a worker
        that fell behind (under load, or served more exchanges than it
        started) still averages its last steps instead of training them
        alone, and the model each worker keeps (its copy, read back after
        `fit`) has them. It is no barrier: a neighbour whose `fit` ends, or
        that is ahead, is not waited for (a worker whose `fit` is shorter
        than its neighbours', e.g. one that pauses to evaluate, returns at
        once); a worker waits at most the timeout without an exchange.
        """
        if self._pacing:
            self.serve_until_neighbours_finish()
        elif self.schedule.rounds is None:
            self.serve_until_neighbours_finish(behind=self._steps_in_all)

    def serve_until_neighbours_finish(self, behind=None):
        """Stays averageable (serving) while a neighbour trains (with
        `behind`: one that has taken fewer steps in all), at most the
        timeout without a new exchange."""
        self.locks.set_serving()
        last = self.locks.served_count()
        deadline = time.monotonic() + self.timeout
        while self._training_neighbours(behind):
            time.sleep(_PACE_CHECK_SECONDS / 5)
            served = self.locks.served_count()
            now = time.monotonic()
            if served > last:
                last, deadline = served, now + self.timeout
            elif now > deadline:
                self.stats["pace_timeouts"] += 1
                return
        self.stats["waited_at_end"] += 1

    def _rebase_pace(self, peers, steps):
        self._pace_peers = frozenset(peers)
        self._pace_rate = sum(self.serve_shares[j] for j in peers)
        self._pace_base = (self.locks.served_count(), steps)

    def _training_neighbours(self, behind=None):
        """The live neighbours that train (with `behind`: and have taken
        fewer steps in all); drops those that do not answer."""
        training = set()
        for j in self.schedule.peers:
            if j in self.schedule.dropped:
                continue
            try:
                trains, steps = self.locks.read_training(j)
            except PEER_STATE_LOST_ERRORS as e:
                self.drop(j, e)
                continue
            if trains and (behind is None or steps < behind):
                training.add(j)
        return frozenset(training)
