"""Gossip topologies: mixing matrices, their spectral gap, and constructors.

NumPy only: importing this package never imports TensorFlow or Keras.

Convention: `W[i, j]` is the weight node `i` gives to node `j`'s value, so one
gossip round is `x_i <- sum_j W[i, j] x_j`. Every mixing matrix is doubly
stochastic (entries `>= 0`, rows and columns summing to 1), so gossip
preserves the global average. See `tf_decentral.topology.base` for the
vocabulary (nodes, neighbors, time-varying topologies) and
`tf_decentral.topology.spectral` for the spectral gap.

Example:
    >>> from tf_decentral import topology
    >>> ring = topology.get("ring", num_nodes=8)
    >>> ring.neighbors(0), round(topology.spectral_gap(ring), 4)
    ((1, 7), 0.1953)
"""

from tf_decentral.topology.base import Topology
from tf_decentral.topology.connectivity import adjacency
from tf_decentral.topology.connectivity import connected_components
from tf_decentral.topology.connectivity import edge_coloring
from tf_decentral.topology.connectivity import two_coloring
from tf_decentral.topology.graphs import complete
from tf_decentral.topology.graphs import exponential
from tf_decentral.topology.graphs import from_adjacency
from tf_decentral.topology.graphs import ring
from tf_decentral.topology.graphs import torus
from tf_decentral.topology.registry import NAMES
from tf_decentral.topology.registry import get
from tf_decentral.topology.registry import resolve
from tf_decentral.topology.spectral import is_doubly_stochastic
from tf_decentral.topology.spectral import spectral_gap
from tf_decentral.topology.time_varying import one_peer_exponential
from tf_decentral.topology.time_varying import random_matching

__all__ = (
    "NAMES",
    "Topology",
    "adjacency",
    "complete",
    "connected_components",
    "edge_coloring",
    "exponential",
    "from_adjacency",
    "get",
    "is_doubly_stochastic",
    "one_peer_exponential",
    "random_matching",
    "resolve",
    "ring",
    "spectral_gap",
    "torus",
    "two_coloring",
)
