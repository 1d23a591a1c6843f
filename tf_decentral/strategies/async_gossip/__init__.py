"""AsyncGossipStrategy: asynchronous decentralized SGD (AD-PSGD, Lian et al.
2018).

* `strategy.py`: the public `AsyncGossipStrategy` (arguments, properties).
* `extended.py`: `AsyncGossipExtended`, its state and the Keras hooks.
* `peers.py`: which peer to exchange with next; idle and dropped peers.
* `exchange.py`: the lock protocol and the atomic exchange (`Locks`,
  `SharedModel`, the injected pairwise step `average`).
* `runtime.py`: each worker's TF server and client, and their start-up.
"""

from tf_decentral.strategies.async_gossip.strategy import AsyncGossipStrategy

__all__ = ("AsyncGossipStrategy",)
