"""The official tfds `fashion_mnist` dataset, built from local IDX files.

Debian's `dataset-fashion-mnist` package ships the original Fashion-MNIST IDX
files, recompressed, so their checksums differ from the ones tfds registers and
the tfds download manager rejects them. `LocalFashionMNIST` subclasses the
official builder (same name, version, features and example keys) and only
replaces where the files come from. The dataset it writes is the standard
`<data_dir>/fashion_mnist/3.0.1/` layout, which plain
`tfds.load("fashion_mnist", data_dir=..., download=False)` reads without this
package.
"""

import gzip
import os
import struct

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from tf_decentral.datasets import _local_builder

DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
"""Where `apt-get install dataset-fashion-mnist` puts the IDX files."""

NUM_EXAMPLES = {"train": 60000, "test": 10000}

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGE_SHAPE = (28, 28)
_NUM_CLASSES = 10
_UBYTE = 0x08  # IDX type code of unsigned bytes.


def source_files(source: str | os.PathLike | None = None) -> dict[str, str]:
    """Returns the paths of the four IDX files, checking that they exist.

    Args:
        source: Directory holding `{train,t10k}-{images-idx3,labels-idx1}-
            ubyte.gz`. Defaults to `DEFAULT_SOURCE`.

    Returns:
        A dict from file name to path, in the order train images, train labels,
        test images, test labels.

    Raises:
        FileNotFoundError: If any of the four files is missing.
    """
    source = os.fspath(DEFAULT_SOURCE if source is None else source)
    paths = {
        name: os.path.join(source, name)
        for pair in _FILES.values()
        for name in pair
    }
    missing = [name for name, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(
            "`source` must be a directory holding the Fashion-MNIST IDX files "
            f"{', '.join(paths)}. Missing: {', '.join(missing)}. "
            f"Received: source={source}. Install Debian's copy with "
            "`apt-get install dataset-fashion-mnist` (it puts them in "
            f"{DEFAULT_SOURCE}), or pass `--source DIR` (`source=DIR` in "
            "Python) pointing at a directory with these files."
        )
    return paths


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Returns the array stored in a gzip-compressed IDX file of bytes.

    The IDX format (used by MNIST and Fashion-MNIST) is a big-endian header,
    `0x00 0x00 <type> <ndim>` followed by `ndim` uint32 sizes, then the data.

    Args:
        path: A `.gz` IDX file whose type code is 0x08 (unsigned byte).

    Returns:
        A uint8 array with the shape given in the header.

    Raises:
        ValueError: If the file is not an unsigned-byte IDX file, or holds
            fewer or more bytes than its header declares.
    """
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4].ljust(4, b"\xff"))
    if zero != 0 or dtype != _UBYTE or ndim == 0 or len(data) < 4 + 4 * ndim:
        raise ValueError(
            "`path` must be a gzip-compressed IDX file of unsigned bytes. "
            f"Received: path={path} with header bytes {data[:4]!r}. Reinstall "
            "it with `apt-get install --reinstall dataset-fashion-mnist`."
        )
    offset = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:offset])
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(shape)):
        raise ValueError(
            f"`path` must hold {int(np.prod(shape))} bytes after its header "
            f"(shape {shape}). Received: path={path} with {array.size} bytes. "
            "The file is truncated or corrupt; reinstall it with "
            "`apt-get install --reinstall dataset-fashion-mnist`."
        )
    return array.reshape(shape)


def read_split(
    images_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    num_examples: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns images `(n, 28, 28, 1)` and int64 labels `(n,)` of one split.

    Raises:
        ValueError: If the files do not hold `num_examples` 28x28 images and
            as many labels in `[0, 10)`.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.shape != (num_examples, *_IMAGE_SHAPE):
        raise ValueError(
            f"`images_path` must hold {num_examples} images of 28x28. "
            f"Received: images_path={images_path} of shape {images.shape}."
        )
    if labels.shape != (num_examples,) or labels.max() >= _NUM_CLASSES:
        raise ValueError(
            f"`labels_path` must hold {num_examples} labels in [0, 10). "
            f"Received: labels_path={labels_path} of shape {labels.shape} "
            f"and maximum {labels.max()}."
        )
    return images[..., np.newaxis], labels.astype(np.int64)


def load_arrays(
    source: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns Fashion-MNIST as NumPy arrays, straight from the IDX files.

    No tfds and no TensorFlow: for benchmarks and tools that want the
    arrays in memory.

    Args:
        source: Directory holding the four IDX files (`DEFAULT_SOURCE` by
            default).

    Returns:
        `(x_train, y_train, x_test, y_test)`: uint8 images `(n, 28, 28, 1)`
        and int64 labels, 60000 train and 10000 test examples.

    Raises:
        FileNotFoundError: If a file is missing (see `source_files`).
        ValueError: If a file is corrupt.
    """
    paths = list(source_files(source).values())
    arrays = []
    for i, split in enumerate(_FILES):
        images, labels = paths[2 * i], paths[2 * i + 1]
        arrays += read_split(images, labels, NUM_EXAMPLES[split])
    return tuple(arrays)


class LocalFashionMNIST(
    _local_builder.LocalSourceBuilder,
    tfds_mnist.FashionMNIST,
    skip_registration=True,
):
    """The official `fashion_mnist` builder, reading local IDX `.gz` files.

    Only `_split_generators` and `_generate_examples` differ from the
    official builder. Examples keep the official keys (the index in the IDX
    file), so tfds writes them in the same order as the official dataset.

    The constructor takes `source`, the directory holding the four IDX `.gz`
    files (default `DEFAULT_SOURCE`), and the keyword arguments of tfds
    builders such as `data_dir`.
    """

    name = "fashion_mnist"

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded.
        paths = list(source_files(self._source).values())
        return [
            tfds.core.SplitGenerator(
                name=split,
                gen_kwargs={
                    "num_examples": NUM_EXAMPLES[split],
                    "data_path": paths[2 * i],
                    "label_path": paths[2 * i + 1],
                },
            )
            for i, split in enumerate(_FILES)
        ]

    def _generate_examples(self, num_examples, data_path, label_path):
        images, labels = read_split(data_path, label_path, num_examples)
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image, "label": label}
