"""Every collective key range tf_decentral uses, and the one allocator.

TensorFlow matches collective ops across tasks by group and instance keys.
Every stock strategy numbers its groups from 1, so two strategies in one
process (a run and its all-reduce comparison) clash unless each draws its
own range; the neighbour exchange of multi-worker gossip keys its
two-member groups and transfers far above every strategy's range.
"""

import itertools

# A strategy's own collectives (metric and variable reductions) take
# `group_key_start = 1 + key base`, with about a thousand groups per
# instance.
_STRATEGY_KEY_BASES = {
    "gossip": 1_000_000,
    "allreduce": 2_000_000,
    "mirrored": 3_000_000,
}
_KEYS_PER_INSTANCE = 1_000
NEIGHBOR_GROUP_KEY_BASE = 20_000_000
NEIGHBOR_INSTANCE_KEY_BASE = 30_000_000

_instance_counters = {kind: itertools.count(1) for kind in _STRATEGY_KEY_BASES}


def key_base(kind: str) -> int:
    """Returns the collective key base of a new strategy of `kind`.

    Every worker creates its strategies in the same order, so the n-th
    strategy of a kind gets the same keys on every worker.

    Args:
        kind: `"gossip"`, `"allreduce"` or `"mirrored"`.

    Raises:
        ValueError: For another `kind`.
    """
    if kind not in _STRATEGY_KEY_BASES:
        raise ValueError(
            f"`kind` must be one of {sorted(_STRATEGY_KEY_BASES)}. "
            f"Received: kind={kind!r}"
        )
    return _STRATEGY_KEY_BASES[kind] + _KEYS_PER_INSTANCE * next(
        _instance_counters[kind]
    )
