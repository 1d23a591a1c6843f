"""GossipStrategy: decentralized parallel SGD (D-PSGD, Lian et al. 2017)."""

from tf_decentral.strategies.gossip.strategy import GossipStrategy
from tf_decentral.strategies.gossip.strategy import GossipVariable

__all__ = ("GossipStrategy", "GossipVariable")
