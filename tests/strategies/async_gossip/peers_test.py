"""Tests of the peer schedule of AsyncGossipStrategy (pure Python)."""

from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral.strategies.async_gossip import peers
from tf_decentral.testing import cluster as testing_cluster

_PURE_PROGRAM = """
import importlib.util

spec = importlib.util.spec_from_file_location("peers", {path!r})
peers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peers)
schedule = peers.PeerSchedule((1, 2), seed=0)
schedule.drop(2, "gone")
print(f"choice={{schedule.choose()}} heavy={{heavy_modules()}}")
"""


class FakeClock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


class PeerScheduleTest(parameterized.TestCase):
    def test_works_without_tensorflow(self):
        # The package's __init__ imports the strategy (and TF); the module
        # itself, loaded from its file, must not need TF.
        result = testing_cluster.run_without_tensorflow(
            _PURE_PROGRAM.format(path=peers.__file__), timeout=60
        )
        self.assertEqual(result.returncode, 0, msg=result.stderr)
        self.assertEqual(result.stdout.strip(), "choice=1 heavy=[]")

    def test_idle_peers_are_skipped_with_a_growing_wait(self):
        # A peer found idle (its fit ended) is not chosen until its check
        # is due; each time it is found idle again the wait doubles, up to
        # a cap.
        clock = FakeClock()
        schedule = peers.PeerSchedule((1, 2, 3), seed=0, clock=clock)
        schedule.drop(3, "gone")
        first, cap = peers.IDLE_RECHECK_SECONDS
        self.assertEqual(schedule.candidates(), [1, 2])
        waits = []
        for _ in range(6):
            waits.append(schedule.mark_idle(2))
            self.assertEqual(schedule.idle[2][1], waits[-1])
            self.assertEqual(schedule.candidates(), [1])
            clock.now += waits[-1] - 1e-3
            self.assertEqual(schedule.candidates(), [1])
            clock.now += 2e-3
            self.assertEqual(schedule.candidates(), [1, 2])  # check is due
        self.assertEqual(waits[:3], [first, 2 * first, 4 * first])
        self.assertEqual(waits[-1], cap)
        self.assertEqual(max(waits), cap)

    def test_readmit_resets_the_wait(self):
        clock = FakeClock()
        schedule = peers.PeerSchedule((1,), seed=0, clock=clock)
        schedule.mark_idle(1)
        schedule.mark_idle(1)
        schedule.readmit(1)
        self.assertEqual(schedule.idle, {})
        self.assertEqual(schedule.candidates(), [1])
        self.assertEqual(schedule.mark_idle(1), peers.IDLE_RECHECK_SECONDS[0])

    def test_choose_is_uniform_over_live_peers(self):
        schedule = peers.PeerSchedule((1, 2, 3, 4), seed=0)
        schedule.drop(4, "gone")
        counts = {}
        for _ in range(3000):
            peer = schedule.choose()
            counts[peer] = counts.get(peer, 0) + 1
        self.assertEqual(sorted(counts), [1, 2, 3])
        for count in counts.values():
            self.assertBetween(count, 850, 1150)

    def test_same_seed_same_choices(self):
        a = peers.PeerSchedule((1, 2, 3), seed=7)
        b = peers.PeerSchedule((1, 2, 3), seed=7)
        self.assertEqual(
            [a.choose() for _ in range(20)], [b.choose() for _ in range(20)]
        )

    @parameterized.named_parameters(
        ("passive", (1, 2), False, None),
        ("all_dropped", (1, 2), True, (1, 2)),
        ("no_peers", (), True, ()),
    )
    def test_solo(self, peer_nodes, active, dropped):
        schedule = peers.PeerSchedule(peer_nodes, active=active, seed=0)
        for peer in dropped or ():
            schedule.drop(peer, "gone")
        self.assertIsNone(schedule.choose())

    def test_all_idle_means_solo_until_a_check_is_due(self):
        clock = FakeClock()
        schedule = peers.PeerSchedule((1, 2), seed=0, clock=clock)
        schedule.mark_idle(1)
        schedule.mark_idle(2)
        self.assertIsNone(schedule.choose())
        clock.now += peers.IDLE_RECHECK_SECONDS[0]
        self.assertIn(schedule.choose(), (1, 2))

    def test_dropped_for_good(self):
        schedule = peers.PeerSchedule((1, 2), seed=0)
        schedule.drop(2, "UnavailableError: gone")
        self.assertEqual(schedule.dropped, {2: "UnavailableError: gone"})
        self.assertEqual(schedule.live_nodes(4), [0, 1, 3])
        self.assertEqual({schedule.choose() for _ in range(50)}, {1})

    def test_jitter_range(self):
        schedule = peers.PeerSchedule((1,), seed=0)
        pauses = [schedule.jitter(0.01) for _ in range(200)]
        self.assertGreaterEqual(min(pauses), 0.005)
        self.assertLess(max(pauses), 0.015)


class RoundsTest(parameterized.TestCase):
    def test_the_round_of_the_step_then_the_next_live_one(self):
        clock = FakeClock()
        schedule = peers.PeerSchedule(
            (1, 3, 5), rounds=(3, None, 1, 5), clock=clock
        )
        self.assertEqual(
            [schedule.choose(t) for t in range(5)], [3, 1, 1, 5, 3]
        )
        # An idle peer's rounds go to the next round's peer until its check.
        schedule.mark_idle(1)
        self.assertEqual([schedule.choose(t) for t in range(4)], [3, 5, 5, 5])
        clock.now += peers.IDLE_RECHECK_SECONDS[0]
        self.assertEqual(schedule.choose(2), 1)
        schedule.drop(3, "gone")
        self.assertEqual(schedule.choose(0), 1)

    def test_a_passive_worker_never_chooses(self):
        schedule = peers.PeerSchedule((1,), active=False, rounds=(1,))
        self.assertIsNone(schedule.choose(0))

    @parameterized.named_parameters(
        ("missing_peer", (1, 2), (1, None)),
        ("not_a_peer", (1,), (1, 4)),
    )
    def test_rounds_must_list_exactly_the_peers(self, peer_list, rounds):
        with self.assertRaisesRegex(ValueError, "every peer, and only peers"):
            peers.PeerSchedule(peer_list, rounds=rounds)


if __name__ == "__main__":
    absltest.main()
