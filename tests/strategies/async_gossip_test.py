"""AsyncGossipStrategy: argument checks, which need no running cluster.

Every bad argument must be rejected before the strategy starts a server or
connects anywhere, so these tests use unreachable addresses.
"""

import collections
import json

import numpy as np
import pytest
import tensorflow as tf

import tf_decentral as tfd
from tf_decentral import strategies
from tf_decentral.strategies.async_gossip import (
    runtime as _async_gossip_runtime,
)


def _resolver(num_workers, task_id=0, has_chief=False, task_type="worker"):
    cluster = {"worker": [f"localhost:{1 + k}" for k in range(num_workers)]}
    if has_chief:
        cluster["chief"] = ["localhost:999"]
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
    )


def test_needs_a_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="Received: cluster_resolver=None"):
        tfd.AsyncGossipStrategy()


def test_needs_two_workers():
    with pytest.raises(ValueError, match="at least 2 workers") as info:
        tfd.AsyncGossipStrategy(cluster_resolver=_resolver(1))
    assert "Received: a cluster with 1 worker(s)" in str(info.value)


def test_one_worker_from_tf_config(monkeypatch):
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps(
            {
                "cluster": {"worker": ["localhost:1"]},
                "task": {"type": "worker", "index": 0},
            }
        ),
    )
    with pytest.raises(ValueError, match="at least 2 workers"):
        tfd.AsyncGossipStrategy()


def test_topology_size_must_match():
    with pytest.raises(ValueError, match="num_nodes=3") as info:
        tfd.AsyncGossipStrategy(
            tfd.topology.ring(4), cluster_resolver=_resolver(3)
        )
    assert "Received: a topology with 4 nodes" in str(info.value)


def test_topology_must_be_connected():
    pair = np.full((2, 2), 0.5)
    two_pairs = np.block([[pair, np.zeros((2, 2))], [np.zeros((2, 2)), pair]])
    with pytest.raises(ValueError, match="must connect every worker") as info:
        tfd.AsyncGossipStrategy(two_pairs, cluster_resolver=_resolver(4))
    assert "workers [0, 1] never exchange" in str(info.value)
    assert "with workers [2, 3]" in str(info.value)


def test_unknown_topology_name():
    with pytest.raises(ValueError, match="Received: name='moebius'"):
        tfd.AsyncGossipStrategy("moebius", cluster_resolver=_resolver(3))


def test_seed_must_be_an_integer():
    with pytest.raises(TypeError, match="Received: seed=0.5"):
        tfd.AsyncGossipStrategy(seed=0.5, cluster_resolver=_resolver(3))


def test_communication_options_type():
    with pytest.raises(TypeError, match="communication_options"):
        tfd.AsyncGossipStrategy(
            communication_options={"timeout_seconds": 3},
            cluster_resolver=_resolver(3),
        )


def test_parameter_servers_do_not_train():
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(
            {"worker": ["localhost:1", "localhost:2"], "ps": ["localhost:3"]}
        ),
        task_type="ps",
        task_id=0,
    )
    with pytest.raises(ValueError, match="task_type='ps'"):
        tfd.AsyncGossipStrategy(cluster_resolver=resolver)


def test_layout_puts_the_chief_first():
    layout = _async_gossip_runtime.layout_from_resolver(
        _resolver(2, task_id=1, has_chief=True)
    )
    assert layout.nodes == (("chief", 0), ("worker", 0), ("worker", 1))
    assert layout.node == 2
    assert layout.task(0) == "chief:0"
    assert (
        layout.server_device(1) == "/job:worker/replica:0/task:0/device:CPU:0"
    )


def test_registry_knows_async_gossip():
    assert "async_gossip" in strategies.NAMES
    with pytest.raises(ValueError, match="at least 2 workers"):
        strategies.get("async_gossip", cluster_resolver=_resolver(1))


def test_exported():
    assert "AsyncGossipStrategy" in tfd.__all__
    assert tfd.AsyncGossipStrategy is strategies.AsyncGossipStrategy


@pytest.mark.parametrize(
    "topology, colouring",
    [
        (tfd.topology.ring(4), [0, 1, 0, 1]),
        (tfd.topology.ring(6), [0, 1, 0, 1, 0, 1]),
        (tfd.topology.torus(2, 4), "bipartite"),
        (tfd.topology.ring(3), None),
        (tfd.topology.ring(5), None),
        (tfd.topology.complete(4), None),
    ],
)
def test_two_coloring(topology, colouring):
    from tf_decentral.strategies.async_gossip import strategy as async_gossip

    adjacency = async_gossip._undirected_peers(topology)
    got = async_gossip.two_coloring(adjacency)
    if colouring is None:
        assert got is None
        return
    if colouring != "bipartite":
        assert got == colouring
    for i, j in zip(*np.nonzero(adjacency)):
        assert got[i] != got[j], (i, j, got)


def test_active_passive_needs_a_bipartite_topology():
    with pytest.raises(ValueError, match="needs a bipartite topology"):
        tfd.AsyncGossipStrategy(
            "ring", cluster_resolver=_resolver(3), active_passive=True
        )


def test_active_passive_type():
    with pytest.raises(TypeError, match="active_passive"):
        tfd.AsyncGossipStrategy(
            "ring", cluster_resolver=_resolver(4), active_passive="yes"
        )


def test_idle_peers_are_skipped_with_a_growing_wait(monkeypatch):
    # A peer found idle (its fit ended) is not chosen until its check is
    # due; each time it is found idle again the wait doubles, up to a cap.
    from tf_decentral.strategies.async_gossip import strategy as async_gossip

    extended = object.__new__(async_gossip._AsyncGossipExtended)
    extended._peers = (1, 2, 3)
    extended.dropped = {3: "gone"}
    extended.idle = {}
    extended.stats = collections.Counter()
    now = [100.0]
    monkeypatch.setattr(async_gossip.time, "monotonic", lambda: now[0])
    first, cap = async_gossip.IDLE_RECHECK_SECONDS
    assert extended._candidates() == [1, 2]
    waits = []
    for _ in range(6):
        extended._mark_idle(2)
        waits.append(extended.idle[2][1])
        assert extended._candidates() == [1]
        now[0] += waits[-1] - 1e-3
        assert extended._candidates() == [1]
        now[0] += 2e-3
        assert extended._candidates() == [1, 2]  # its check is due
    assert waits[:3] == [first, 2 * first, 4 * first]
    assert waits[-1] == cap and max(waits) == cap
    assert extended.stats["idle"] == 6
