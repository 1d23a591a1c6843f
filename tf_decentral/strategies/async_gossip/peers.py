"""Which peer an `AsyncGossipStrategy` worker exchanges with next.

Pure Python: no TensorFlow. A `PeerSchedule` holds one worker's view of its
peers (its neighbours in the topology, both ways):

* **live** peers are chosen uniformly at random for each exchange (Lian et
  al. 2018, Algorithm 1), or, given `rounds`, in the order of a one-peer
  schedule: in step `t` the peer of round `t mod len(rounds)`, else the
  next round's (the active workers of the active/passive split use the
  rounds of `topology.edge_coloring`, so that each passive worker is
  chosen by about one active neighbour per step); a *passive* worker (see
  `AsyncGossipStrategy`) never chooses one and exchanges solo;
* an **idle** peer (its `fit` ended: it evaluates, saves or is done) is
  skipped until its recheck is due: `IDLE_RECHECK_SECONDS[0]` after it was
  first found idle, twice as long each time it is found idle again, at most
  `IDLE_RECHECK_SECONDS[1]`; it is re-admitted as soon as an exchange with
  it succeeds;
* a **dropped** peer (it died, stopped answering, or restarted and lost
  its state) is never chosen again.

Example:
    >>> from tf_decentral.strategies.async_gossip import peers
    >>> clock = [0.0]
    >>> schedule = peers.PeerSchedule((1, 2, 3), seed=0, clock=lambda: clock[0])
    >>> schedule.drop(3, "UnavailableError: gone")
    >>> schedule.mark_idle(2)
    0.1
    >>> schedule.candidates()
    [1]
    >>> clock[0] = 0.1
    >>> schedule.candidates()
    [1, 2]
    >>> rounds = peers.PeerSchedule((1, 3), rounds=(3, 1))
    >>> [rounds.choose(step) for step in range(4)]
    [3, 1, 3, 1]
"""

import random
import time

IDLE_RECHECK_SECONDS = (0.1, 1.0)
"""A peer found idle (its `fit` ended) is tried again after the first value,
then after twice as long each time it is still idle, up to the second."""


class PeerSchedule:
    """One worker's peers: the random choice, idle and dropped peers.

    Args:
        peers: The node indices this worker may exchange with.
        active: False for a passive worker: `choose` always returns None.
        rounds: None (choose at random), or the peer of each round of a
            one-peer schedule (None for a round without one); every peer
            must appear.
        seed: Seeds the random choice of peers (and the retry jitter);
            None draws fresh randomness.
        clock: Returns the current time in seconds (monotonic).

    Attributes:
        peers: The peers, as a tuple.
        active: Whether this worker starts exchanges with peers.
        dropped: Dropped peer -> the reason (never chosen again).
        idle: Idle peer -> `(time of its next check, current wait)`.
    """

    def __init__(
        self,
        peers,
        *,
        active=True,
        rounds=None,
        seed=None,
        clock=time.monotonic,
    ):
        self.peers = tuple(peers)
        self.active = bool(active)
        if rounds is not None:
            rounds = tuple(rounds)
            listed = {p for p in rounds if p is not None}
            if listed != set(self.peers):
                raise ValueError(
                    "`rounds` must list every peer, and only peers. "
                    f"Received: rounds={rounds}, peers={self.peers}"
                )
        self.rounds = rounds
        self.dropped = {}
        self.idle = {}
        self._rng = random.Random(seed)
        self._clock = clock

    def candidates(self) -> list:
        """Returns the peers not dropped, and not idle unless their check is
        due, in `peers` order."""
        now = self._clock()
        return [
            j
            for j in self.peers
            if j not in self.dropped
            and (j not in self.idle or self.idle[j][0] <= now)
        ]

    def choose(self, step=0):
        """Returns the candidate for `step`, or None (exchange solo) when
        there is none or this worker is passive.

        At random without `rounds`; else the peer of round `step mod
        len(rounds)`, or of the next round with a candidate.
        """
        live = self.candidates() if self.active else []
        if not live:
            return None
        if self.rounds is None:
            return self._rng.choice(live)
        n = len(self.rounds)
        for k in range(n):
            peer = self.rounds[(step + k) % n]
            if peer in live:
                return peer
        raise AssertionError("unreachable: every peer is in a round")

    def mark_idle(self, peer) -> float:
        """Skips `peer` until its next check; returns the wait in seconds.

        The wait starts at `IDLE_RECHECK_SECONDS[0]` and doubles each time
        `peer` is found idle again, up to `IDLE_RECHECK_SECONDS[1]`.
        """
        first, cap = IDLE_RECHECK_SECONDS
        _, wait = self.idle.get(peer, (0.0, first / 2))
        wait = min(2 * wait, cap)
        self.idle[peer] = (self._clock() + wait, wait)
        return wait

    def readmit(self, peer) -> None:
        """Forgets that `peer` was idle (an exchange with it succeeded)."""
        self.idle.pop(peer, None)

    def drop(self, peer, reason: str) -> None:
        """Never chooses `peer` again (until `readmit_dropped`); `reason`
        says why."""
        self.dropped[peer] = reason

    def readmit_dropped(self, peer) -> None:
        """Chooses `peer` again: it was restarted (see `rejoin.py`)."""
        self.dropped.pop(peer, None)
        self.idle.pop(peer, None)

    def live_nodes(self, num_nodes: int) -> list:
        """Returns the nodes `0 .. num_nodes - 1` that are not dropped."""
        return [k for k in range(num_nodes) if k not in self.dropped]

    def jitter(self, pause: float) -> float:
        """Returns `pause` scaled by a random factor in `[0.5, 1.5)`, so that
        workers retrying busy locks do not retry in step."""
        return pause * (0.5 + self._rng.random())
