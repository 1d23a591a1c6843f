"""The strategies: `GossipStrategy` and a name registry for flags."""

from tf_decentral.strategies.gossip import GossipStrategy
from tf_decentral.strategies.gossip import GossipVariable
from tf_decentral.strategies.registry import NAMES
from tf_decentral.strategies.registry import get

__all__ = ("GossipStrategy", "GossipVariable", "NAMES", "get")
