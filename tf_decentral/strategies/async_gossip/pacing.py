"""How a passive `AsyncGossipStrategy` worker keeps pace with its actives.

On the active/passive split (see `AsyncGossipStrategy`) a passive worker's
step needs no network: with cheap compute it would race through its steps
alone and finish long before its active neighbours, which would then train
their last steps with nobody to average with. So a passive worker waits,
after each step, until its actives have averaged with it about once per
step (`PacingMixin.pace`), and at the end of its `fit` stays averageable
until they have finished (`serve_until_neighbours_finish`). Without the
split every worker starts exchanges; at the end of its `fit` a worker stays
averageable for a bounded time while a neighbour trains (`serve_at_end`).
"""

import collections
import statistics
import time

from tf_decentral.strategies._collective import PEER_STATE_LOST_ERRORS

PASSIVE_LEAD_STEPS = 4
"""How many steps a passive worker may run ahead of the exchanges its active
neighbours start with it (see `PacingMixin.pace`)."""

ALL_ACTIVE_SERVE_STEPS = 8
"""Without the split, how long (in this worker's recent steps) a worker
whose steps are done stays averageable for neighbours that still train (see
`PacingMixin.serve_at_end`)."""

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

    def start_step_clock(self):
        """At the start of a `fit`: forgets the previous `fit`'s steps."""
        self._step_ends = collections.deque(maxlen=ALL_ACTIVE_SERVE_STEPS + 1)

    def note_step(self):
        """Records the end of a training step (see `serve_at_end`), in a
        `fit` (a step outside one, e.g. `train_on_batch`, is not timed)."""
        ends = getattr(self, "_step_ends", None)
        if ends is not None:
            ends.append(time.monotonic())

    def serve_at_end(self):
        """At the end of a `fit`, its steps done: a passive worker stays
        averageable until its active neighbours have finished; without the
        split, a worker stays averageable while a neighbour still trains,
        for at most `ALL_ACTIVE_SERVE_STEPS` of its recent steps (the lower
        median of their durations: a `fit`'s first steps, which trace and
        wait for the others to start, do not count; a bound: a worker that
        finishes early does not wait for a much slower one, whose steps
        beyond that train alone). So the last steps of the workers that
        finish last still average, and the model each worker keeps (its
        copy, read back after `fit`) has them.
        """
        if self._pacing:
            self.serve_until_neighbours_finish()
            return
        ends = list(self._step_ends)
        if self.schedule.rounds is None and len(ends) >= 2:
            step = statistics.median_low(b - a for a, b in zip(ends, ends[1:]))
            self.serve_until_neighbours_finish(ALL_ACTIVE_SERVE_STEPS * step)

    def serve_until_neighbours_finish(self, max_seconds=None):
        """Stays averageable (serving) until no neighbour trains, at most
        `max_seconds` (None: no bound), and at most the timeout without a
        new exchange."""
        self.locks.set_serving()
        last = self.locks.served_count()
        now = time.monotonic()
        deadline = now + self.timeout
        end = None if max_seconds is None else now + max_seconds
        while self._training_neighbours():
            time.sleep(_PACE_CHECK_SECONDS / 5)
            served = self.locks.served_count()
            now = time.monotonic()
            if served > last:
                last, deadline = served, now + self.timeout
            elif now > deadline:
                self.stats["pace_timeouts"] += 1
                return
            if end is not None and now > end:
                self.stats["served_until_bound"] += 1
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
