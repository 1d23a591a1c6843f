"""AsyncGossipStrategy: asynchronous decentralized SGD (AD-PSGD, Lian et al.
2018)."""

from tf_decentral.strategies.async_gossip.strategy import AsyncGossipStrategy

__all__ = ("AsyncGossipStrategy",)
