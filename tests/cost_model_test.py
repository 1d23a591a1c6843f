"""Tests of `tf_decentral.cost_model`: properties, measured anchors, no TF."""

import textwrap

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral import cost_model as cm
from tf_decentral.testing import cluster as testing_cluster

# research/netsim_measurements.md: 8 workers, L = 20.4 ms one way at 1 Gbit/s
# ("lat"), 100 Mbit/s with 2 ms ("bw").
_LAT = cm.Network.from_netsim(rate_mbit=1000, latency_ms=20.4)
_BW = cm.Network.from_netsim(rate_mbit=100, latency_ms=2.0)
_MB4 = 4e6
_KB4 = 4e3


class NetworkTest(absltest.TestCase):
    def test_from_netsim_converts_units(self):
        net = cm.Network.from_netsim(
            rate_mbit=100, latency_ms=20, overhead_ms=1
        )
        self.assertEqual(net.bandwidth, 12.5e6)
        self.assertAlmostEqual(net.latency, 0.02)
        self.assertAlmostEqual(net.hop, 0.021)
        self.assertAlmostEqual(net.beta, 8e-8)

    def test_unshaped_link_has_no_transfer_time(self):
        net = cm.Network.from_netsim(rate_mbit=None, latency_ms=0)
        self.assertEqual(net.beta, 0.0)
        self.assertAlmostEqual(cm.gossip(_MB4, 2, net), 2 * cm.DEFAULT_OVERHEAD)

    def test_rejects_bad_values(self):
        with self.assertRaisesRegex(ValueError, "latency"):
            cm.Network(latency=-1.0)
        with self.assertRaisesRegex(ValueError, "bandwidth"):
            cm.Network(latency=0.0, bandwidth=0.0)
        with self.assertRaisesRegex(ValueError, "overhead"):
            cm.Network(latency=0.0, overhead=-1e-3)


class RingAllReduceTest(parameterized.TestCase):
    def test_one_worker_costs_nothing(self):
        self.assertEqual(cm.ring_allreduce(_MB4, 1, _BW), 0.0)

    def test_latency_bound_is_two_p_minus_one_hops(self):
        # Measured 319 ms for 4 KB: 14 x 22.8 ms.
        t = cm.ring_allreduce(_KB4, 8, _LAT)
        self.assertAlmostEqual(t, 14 * (0.0204 + cm.DEFAULT_OVERHEAD))
        self.assertAlmostEqual(t, 0.319, delta=0.319 * 0.1)

    def test_bandwidth_bound_is_seven_quarters_m_beta(self):
        # Measured 567 ms for 4 MB at 100 Mbit/s: 1.75 m beta.
        t = cm.ring_allreduce(_MB4, 8, _BW)
        self.assertAlmostEqual(t, 1.75 * _MB4 * 8e-8)
        self.assertAlmostEqual(t, 0.567, delta=0.567 * 0.1)

    def test_latency_overlaps_transfer(self):
        # Measured: 4 MB took as long as 0.4 MB in the latency-bound case.
        self.assertEqual(
            cm.ring_allreduce(0.4e6, 8, _LAT), cm.ring_allreduce(_KB4, 8, _LAT)
        )

    @parameterized.parameters(2, 4, 8, 16)
    def test_textbook_adds_what_tf_overlaps(self, p):
        for net in (_LAT, _BW):
            tf_form = cm.ring_allreduce(_MB4, p, net)
            textbook = cm.ring_allreduce(_MB4, p, net, textbook=True)
            self.assertGreaterEqual(textbook, tf_form)
            self.assertLessEqual(textbook, 2 * tf_form + 1e-12)

    def test_extra_reductions_add_latency_only(self):
        base = cm.ring_allreduce(_MB4, 8, _BW)
        more = cm.ring_allreduce(_MB4, 8, _BW, extra_reductions=2)
        self.assertAlmostEqual(more - base, 2 * 14 * _BW.hop)
        with self.assertRaisesRegex(ValueError, "extra_reductions"):
            cm.ring_allreduce(_MB4, 8, _BW, extra_reductions=-1)

    def test_monotonic_in_size_latency_and_workers(self):
        sizes = np.array([_KB4, 0.4e6, _MB4, 40e6])
        self.assertTrue(np.all(np.diff(cm.ring_allreduce(sizes, 8, _BW)) >= 0))
        nets = [cm.Network(latency=x, bandwidth=1e8) for x in (0, 0.01, 0.1)]
        times = [cm.ring_allreduce(_MB4, 8, n) for n in nets]
        self.assertEqual(times, sorted(times))
        times = [cm.ring_allreduce(_MB4, p, _BW) for p in (2, 4, 8, 16)]
        self.assertEqual(times, sorted(times))


class GossipTest(absltest.TestCase):
    def test_one_peer_is_degree_one(self):
        self.assertEqual(cm.one_peer_gossip(_MB4, _BW), cm.gossip(_MB4, 1, _BW))

    def test_one_pull_whatever_the_degree(self):
        # pairwise_exchange.md: ring bcast = one-peer bcast = 2.1 L at 4 KB.
        for d in (1, 2, 3):
            t = cm.gossip(_KB4, d, _LAT)
            self.assertAlmostEqual(t, 2 * _LAT.hop, delta=1e-3)
        self.assertAlmostEqual(cm.gossip(_KB4, 2, _LAT), 0.042, delta=0.01)

    def test_bytes_scale_with_degree(self):
        t1, t2, t3 = (cm.gossip(_MB4, d, _BW) for d in (1, 2, 3))
        self.assertAlmostEqual(t2 - t1, _MB4 * _BW.beta)
        self.assertAlmostEqual(t3 - t2, _MB4 * _BW.beta)

    def test_ring_gossip_moves_more_bytes_than_ring_allreduce(self):
        # 2 m per worker against 2 (p - 1) / p m: bandwidth-bound, the ring
        # gossip is slower; one peer saves 1 - 1 / 1.75 at most.
        ring = cm.gossip(_MB4, 2, _BW)
        allreduce = cm.ring_allreduce(_MB4, 8, _BW)
        one_peer = cm.one_peer_gossip(_MB4, _BW)
        self.assertGreater(ring, allreduce)
        self.assertLess(one_peer / allreduce, 0.6)
        self.assertGreater(one_peer / allreduce, 1 / 1.75)

    def test_latency_bound_ratio_to_allreduce(self):
        ratio = cm.one_peer_gossip(0.4e6, _LAT) / cm.ring_allreduce(
            0.4e6, 8, _LAT
        )
        self.assertLess(ratio, 0.2)

    def test_textbook_serializes_edges(self):
        self.assertAlmostEqual(
            cm.gossip(_KB4, 3, _LAT, textbook=True),
            3 * _LAT.hop + 3 * _KB4 * _LAT.beta,
        )

    def test_rejects_degree_zero(self):
        with self.assertRaisesRegex(ValueError, "degree"):
            cm.gossip(_MB4, 0, _BW)


class ParameterServerTest(absltest.TestCase):
    def test_one_server_is_the_hot_spot(self):
        ps = cm.parameter_server(_MB4, 8, _BW)
        self.assertGreater(ps, cm.ring_allreduce(_MB4, 8, _BW))
        self.assertGreater(ps, cm.gossip(_MB4, 2, _BW))
        self.assertAlmostEqual(ps, 6 * _BW.hop + 2 * 8 * _MB4 * _BW.beta)

    def test_sharding_removes_the_hot_spot(self):
        times = [
            cm.parameter_server(_MB4, 8, _BW, num_shards=s) for s in (1, 2, 8)
        ]
        self.assertEqual(times, sorted(times, reverse=True))
        self.assertAlmostEqual(times[-1], 6 * _BW.hop + 2 * _MB4 * _BW.beta)
        self.assertEqual(
            cm.parameter_server(_MB4, 8, _BW, num_shards=16), times[-1]
        )

    def test_textbook_one_server(self):
        self.assertAlmostEqual(
            cm.parameter_server(_MB4, 8, _BW, textbook=True),
            2 * 8 * (_BW.hop + _MB4 * _BW.beta),
        )

    def test_round_trips_scale_the_latency_term(self):
        base = cm.parameter_server(_MB4, 8, _BW)
        more = cm.parameter_server(_MB4, 8, _BW, round_trips=5)
        self.assertAlmostEqual(more - base, 2 * 2 * _BW.hop)
        with self.assertRaisesRegex(ValueError, "round_trips"):
            cm.parameter_server(_MB4, 8, _BW, round_trips=0)

    def test_rejects_zero_shards(self):
        with self.assertRaisesRegex(ValueError, "num_shards"):
            cm.parameter_server(_MB4, 8, _BW, num_shards=0)


class DownpourTest(absltest.TestCase):
    def test_less_frequent_communication_is_faster(self):
        kwargs = dict(compute=0.05, num_shards=8)
        t11 = cm.downpour(_MB4, 8, _BW, **kwargs)
        t14 = cm.downpour(_MB4, 8, _BW, n_push=4, **kwargs)
        t44 = cm.downpour(_MB4, 8, _BW, n_fetch=4, n_push=4, **kwargs)
        self.assertGreater(t11, t14)
        self.assertGreater(t14, t44)

    def test_server_bandwidth_bounds_everyone(self):
        t = cm.downpour(_MB4, 8, _BW, compute=0.0)
        self.assertAlmostEqual(t, 8 * _MB4 * _BW.beta)
        self.assertLess(cm.downpour(_MB4, 8, _BW, num_shards=8), t)

    def test_textbook_has_no_server_bound(self):
        self.assertAlmostEqual(
            cm.downpour(_MB4, 8, _BW, compute=0.1, textbook=True),
            0.1 + 2 * (_BW.hop + _MB4 * _BW.beta),
        )

    def test_rejects_zero_period(self):
        with self.assertRaisesRegex(ValueError, "n_fetch"):
            cm.downpour(_MB4, 8, _BW, n_fetch=0)

    def test_counted_round_trips_replace_the_protocols(self):
        # The protocol: one round trip per fetch and per push, so 1.5 per
        # step with n_push = 2; a count of 13 replaces them, the bytes stay.
        kwargs = dict(compute=0.1, num_shards=8, n_push=2)
        default = cm.downpour(_MB4, 8, _BW, **kwargs)
        self.assertAlmostEqual(
            default, 0.1 + 1.5 * (2 * _BW.hop + _MB4 * _BW.beta)
        )
        self.assertAlmostEqual(
            cm.downpour(_MB4, 8, _BW, round_trips=1.5, **kwargs), default
        )
        self.assertAlmostEqual(
            cm.downpour(_MB4, 8, _BW, round_trips=13, **kwargs),
            0.1 + 13 * 2 * _BW.hop + 1.5 * _MB4 * _BW.beta,
        )
        with self.assertRaisesRegex(ValueError, "round_trips=0"):
            cm.downpour(_MB4, 8, _BW, round_trips=0)
        with self.assertRaisesRegex(ValueError, "textbook"):
            cm.downpour(_MB4, 8, _BW, round_trips=2, textbook=True)


class AdPsgdTest(absltest.TestCase):
    def test_round_trips_and_two_transfers(self):
        self.assertAlmostEqual(
            cm.ad_psgd(_MB4, _BW, round_trips=2),
            4 * _BW.hop + 2 * _MB4 * _BW.beta,
        )
        self.assertLess(
            cm.ad_psgd(_MB4, _BW, textbook=True), cm.ad_psgd(_MB4, _BW)
        )


class BytesSentTest(parameterized.TestCase):
    def test_allreduce_sends_two_p_minus_one_over_p_models(self):
        self.assertAlmostEqual(
            cm.bytes_sent_per_step(
                "allreduce", model_bytes=_MB4, num_workers=8
            ),
            1.75 * _MB4,
        )
        self.assertEqual(
            cm.bytes_sent_per_step(
                "allreduce", model_bytes=_MB4, num_workers=1
            ),
            0.0,
        )

    def test_gossip_sends_one_model_per_out_neighbour(self):
        ring = cm.bytes_sent_per_step(
            "gossip", model_bytes=_MB4, num_workers=8, degree=2
        )
        one = cm.bytes_sent_per_step(
            "one_peer", model_bytes=_MB4, num_workers=8
        )
        self.assertEqual((ring, one), (2 * _MB4, _MB4))

    def test_downpour_pushes_every_n_push_steps(self):
        self.assertEqual(
            cm.bytes_sent_per_step(
                "downpour", model_bytes=_MB4, num_workers=8, n_push=4
            ),
            _MB4 / 4,
        )

    def test_broadcasts_and_rejects_bad_values(self):
        np.testing.assert_allclose(
            cm.bytes_sent_per_step(
                "gossip", model_bytes=np.array([1.0, 2.0]), num_workers=8
            ),
            [2.0, 4.0],
        )
        with self.assertRaisesRegex(ValueError, "scheme.*Received"):
            cm.bytes_sent_per_step("ring", model_bytes=1, num_workers=8)
        with self.assertRaisesRegex(ValueError, "degree"):
            cm.bytes_sent_per_step(
                "gossip", model_bytes=1, num_workers=8, degree=0
            )
        with self.assertRaisesRegex(ValueError, "n_push"):
            cm.bytes_sent_per_step(
                "downpour", model_bytes=1, num_workers=8, n_push=0
            )


class StepTimeTest(parameterized.TestCase):
    def _kwargs(self, compute, **extra):
        return dict(
            model_bytes=0.4e6,
            num_workers=8,
            network=cm.Network.from_netsim(1000, 1),
            compute=compute,
            **extra,
        )

    @parameterized.parameters(*cm.SCHEMES)
    def test_every_scheme_is_positive_and_at_least_compute(self, scheme):
        times = cm.worker_step_times(scheme, **self._kwargs(0.05))
        self.assertEqual(times.shape, (8,))
        self.assertTrue(np.all(times >= 0.05))

    def test_synchronous_schemes_wait_for_the_slowest(self):
        compute = [0.1] * 7 + [0.4]
        for scheme in ("allreduce", "gossip", "one_peer", "ps_sync"):
            times = cm.worker_step_times(scheme, **self._kwargs(compute))
            self.assertTrue(np.all(times >= 0.4), scheme)
            self.assertEqual(len(set(times.tolist())), 1)

    def test_straggler_goal_shape(self):
        # One worker 4x slower, compute-dominated: asynchronous schemes keep
        # most of their throughput, synchronous ones fall to about 1/4.
        fast = [0.1] * 8
        slow = [0.1] * 7 + [0.4]
        for scheme, low, high in (
            ("ad_psgd", 0.7, 1.0),
            ("downpour", 0.7, 1.0),
            ("allreduce", 0.0, 0.35),
            ("one_peer", 0.0, 0.35),
        ):
            kwargs = self._kwargs(fast, num_shards=8)
            base = cm.throughput(scheme, batch_size=32, **kwargs)
            kwargs = self._kwargs(slow, num_shards=8)
            ratio = cm.throughput(scheme, batch_size=32, **kwargs) / base
            self.assertBetween(ratio, low, high)

    def test_round_trips_reach_the_schemes_that_take_them(self):
        latency = cm.Network.from_netsim(None, 10)  # hop only, no transfer
        kwargs = dict(self._kwargs(0.1), network=latency, num_shards=8)
        for scheme, protocol in (("ps_sync", 3), ("downpour", 2)):
            base = cm.step_time(scheme, **kwargs)
            more = cm.step_time(scheme, round_trips=protocol + 10, **kwargs)
            self.assertAlmostEqual(more - base, 10 * 2 * latency.hop)
        with self.assertRaisesRegex(ValueError, "applies to"):
            cm.step_time("allreduce", round_trips=3, **kwargs)

    def test_overlap_hides_gossip_under_compute(self):
        kwargs = self._kwargs(0.2)
        overlapped = cm.step_time("one_peer", overlap=True, **kwargs)
        serial = cm.step_time("one_peer", overlap=False, **kwargs)
        self.assertAlmostEqual(overlapped, 0.2)
        self.assertGreater(serial, overlapped)

    def test_overlap_hides_ad_psgd_exchange_per_worker(self):
        # One worker's compute under its exchange, the other's above it.
        net = cm.Network.from_netsim(None, 20)
        comm = cm.ad_psgd(0.0, net)
        compute = [comm / 2] + [comm * 2] * 7
        kwargs = dict(model_bytes=0.0, num_workers=8, network=net)
        overlapped = cm.worker_step_times(
            "ad_psgd", compute=compute, overlap=True, **kwargs
        )
        serial = cm.worker_step_times("ad_psgd", compute=compute, **kwargs)
        np.testing.assert_allclose(overlapped, [comm] + [comm * 2] * 7)
        np.testing.assert_allclose(serial, np.add(compute, comm))

    def test_arrays_broadcast(self):
        latency = np.array([0.0, 0.005, 0.02])
        net = cm.Network(latency=latency, bandwidth=125e6)
        times = cm.ring_allreduce(0.4e6, 8, net)
        self.assertEqual(times.shape, (3,))
        self.assertTrue(np.all(np.diff(times) > 0))

    def test_rejects_unknown_scheme_and_bad_compute(self):
        with self.assertRaisesRegex(ValueError, "scheme"):
            cm.step_time("ring", **self._kwargs(0.1))
        with self.assertRaisesRegex(ValueError, "compute"):
            cm.step_time("allreduce", **self._kwargs([0.1, 0.2]))
        with self.assertRaisesRegex(ValueError, "num_workers"):
            cm.ring_allreduce(_MB4, 0, _BW)


# Runs in a fresh interpreter that cannot import TensorFlow or Keras
# (`tf_decentral.testing.cluster.run_without_tensorflow`).
_PROGRAM = textwrap.dedent(
    """
    import sys

    from tf_decentral import cost_model

    net = cost_model.Network.from_netsim(100, 20)
    t = cost_model.step_time(
        "allreduce", model_bytes=4e6, num_workers=8, network=net, compute=0.0
    )
    heavy = heavy_modules()
    print(f"t={t:.3f} heavy={heavy}")
    """
)


class NoTensorFlowImportTest(absltest.TestCase):
    def test_cost_model_imports_and_works_without_tensorflow(self):
        result = testing_cluster.run_without_tensorflow(_PROGRAM, timeout=120)
        self.assertEqual(result.returncode, 0, msg=result.stderr)
        self.assertEqual(result.stdout.strip(), "t=0.560 heavy=[]")


if __name__ == "__main__":
    absltest.main()
