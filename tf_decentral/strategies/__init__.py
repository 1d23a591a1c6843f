"""The strategies: `GossipStrategy` and a name registry for flags."""

from tf_decentral.strategies.all_reduce import AllReduceStrategy
from tf_decentral.strategies.async_gossip import AsyncGossipStrategy
from tf_decentral.strategies.gossip import GossipStrategy
from tf_decentral.strategies.gossip import GossipVariable
from tf_decentral.strategies.registry import NAMES
from tf_decentral.strategies.registry import get

__all__ = (
    "AllReduceStrategy",
    "AsyncGossipStrategy",
    "GossipStrategy",
    "GossipVariable",
    "NAMES",
    "get",
)
