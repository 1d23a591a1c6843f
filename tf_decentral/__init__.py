"""Decentralized and asynchronous training as `tf.distribute` strategies.

```python
import tf_decentral as tfd

strategy = tfd.GossipStrategy("ring")
with strategy.scope():
    model = ...
    model.compile(...)
model.fit(...)
```

Submodules are imported on first use: `tf_decentral.topology` is NumPy only
and importing it never imports TensorFlow.
"""

import importlib

__version__ = "0.1.0"

_LAZY_ATTRIBUTES = {
    "GossipStrategy": ("tf_decentral.strategies.gossip", "GossipStrategy"),
    "AllReduceStrategy": (
        "tf_decentral.strategies.all_reduce",
        "AllReduceStrategy",
    ),
    "AsyncGossipStrategy": (
        "tf_decentral.strategies.async_gossip",
        "AsyncGossipStrategy",
    ),
    "DownpourParameterServerStrategy": (
        "tf_decentral.strategies.downpour",
        "DownpourParameterServerStrategy",
    ),
}
_LAZY_MODULES = (
    "callbacks",
    "cluster",
    "cost_model",
    "datasets",
    "ops",
    "strategies",
    "testing",
    "topology",
)

__all__ = (
    "AllReduceStrategy",
    "AsyncGossipStrategy",
    "DownpourParameterServerStrategy",
    "GossipStrategy",
    *_LAZY_MODULES,
    "__version__",
)


def __getattr__(name):
    if name in _LAZY_ATTRIBUTES:
        module, attr = _LAZY_ATTRIBUTES[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
