"""DownpourParameterServerStrategy: Downpour SGD (Dean et al. 2012) and the
parameter-server protocols of Gupta et al. 2016."""

from tf_decentral.strategies.downpour.strategy import (
    DownpourParameterServerStrategy,
)
from tf_decentral.strategies.downpour.strategy import StalenessHistogram

__all__ = ("DownpourParameterServerStrategy", "StalenessHistogram")
