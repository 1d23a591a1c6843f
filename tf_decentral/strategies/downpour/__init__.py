"""DownpourParameterServerStrategy: Downpour SGD (Dean et al. 2012) and the
parameter-server protocols of Gupta et al. 2016.

`strategy.py` holds the public class; its extended (the chief's scheduling
and run state) is in `driver.py`, the ps side in `ps.py`, the worker's
closure in `worker.py`, variable placement in `placement.py` and push
statistics in `stats.py`.
"""

from tf_decentral.strategies.downpour.placement import RowShardedVariable
from tf_decentral.strategies.downpour.stats import PushRecord
from tf_decentral.strategies.downpour.stats import StalenessHistogram
from tf_decentral.strategies.downpour.strategy import PROTOCOLS
from tf_decentral.strategies.downpour.strategy import DownpourOptions
from tf_decentral.strategies.downpour.strategy import (
    DownpourParameterServerStrategy,
)

__all__ = (
    "PROTOCOLS",
    "DownpourOptions",
    "DownpourParameterServerStrategy",
    "PushRecord",
    "RowShardedVariable",
    "StalenessHistogram",
)
