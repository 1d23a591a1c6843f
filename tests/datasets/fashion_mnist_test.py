"""Tests preparing the official `fashion_mnist` from Debian's IDX files.

Preparing takes 12-25 s, so it happens once for the module.
"""

import gzip
import os
import struct
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from tf_decentral import datasets
from tf_decentral.datasets import __main__ as cli

SOURCE = "/usr/share/datasets/fashion-mnist"

pytestmark = pytest.mark.skipif(
    not os.path.isdir(SOURCE),
    reason=(
        f"needs Debian's Fashion-MNIST files in {SOURCE}: "
        "apt-get install -y dataset-fashion-mnist"
    ),
)


def read_idx(name):
    """Reads a gzip'd IDX file of bytes, independently of the package."""
    with gzip.open(os.path.join(SOURCE, name), "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return datasets.prepare("fashion_mnist", data_dir=data_dir), data_dir


def plain_load(data_dir, split, **kwargs):
    return tfds.load(
        "fashion_mnist",
        split=split,
        data_dir=data_dir,
        download=False,
        try_gcs=False,
        **kwargs,
    )


def test_prepare_builds_the_official_layout(prepared):
    result, data_dir = prepared
    assert result.created
    assert result.name == "fashion_mnist"
    assert result.version == "3.0.1"
    assert result.path == os.path.join(data_dir, "fashion_mnist", "3.0.1")
    assert result.num_examples == {"train": 60000, "test": 10000}
    # The registered (official) builder reads it, not ours.
    builder = tfds.builder("fashion_mnist", data_dir=data_dir)
    assert type(builder) is tfds_mnist.FashionMNIST
    assert builder.is_prepared()


@pytest.mark.parametrize(
    ("split", "expected"), [("train", 60000), ("test", 10000)]
)
def test_plain_tfds_load_counts_every_record(prepared, split, expected):
    _, data_dir = prepared
    ds = plain_load(
        data_dir, split, decoders={"image": tfds.decode.SkipDecoding()}
    )
    count = ds.batch(10000).reduce(
        np.int32(0), lambda n, batch: n + tf.shape(batch["label"])[0]
    )
    assert int(count) == expected


def test_examples_have_official_shape_dtype_and_features(prepared):
    _, data_dir = prepared
    ds, info = plain_load(data_dir, "train", as_supervised=True, with_info=True)
    image, label = next(iter(ds))
    assert image.shape == (28, 28, 1)
    assert image.dtype == np.uint8
    assert 0 <= int(label) < 10
    assert info.features["label"].names[0] == "T-shirt/top"
    assert info.features["label"].num_classes == 10
    assert info.supervised_keys == ("image", "label")


def test_test_split_is_the_idx_test_set_with_labels(prepared):
    _, data_dir = prepared
    images = read_idx("t10k-images-idx3-ubyte.gz")
    labels = read_idx("t10k-labels-idx1-ubyte.gz")
    index_of = {}
    for i, image in enumerate(images):
        index_of.setdefault(image.tobytes(), []).append(i)
    ds = plain_load(data_dir, "test", as_supervised=True).batch(10000)
    got_images, got_labels = (t.numpy() for t in next(iter(ds)))
    assert set(got_labels.tolist()) == set(range(10))
    seen = set()
    for image, label in zip(got_images, got_labels):
        matches = index_of[image[..., 0].tobytes()]
        assert label in labels[matches]
        seen.update(matches)
    assert len(seen) == 10000


def test_train_order_is_tfds_order_not_idx_order(prepared):
    # tfds shuffles records by a hash of their key at write time. Our keys are
    # the official ones (the IDX index), so the first record is IDX image
    # 16399 (a pullover), as in the official dataset, not IDX image 0.
    _, data_dir = prepared
    images = read_idx("train-images-idx3-ubyte.gz")
    labels = read_idx("train-labels-idx1-ubyte.gz")
    assert labels[0] == 9  # The first IDX label: ankle boot.
    ds = plain_load(data_dir, "train", as_supervised=True)
    first = [(i.numpy()[..., 0], int(j)) for i, j in ds.take(100)]
    np.testing.assert_array_equal(first[0][0], images[16399])
    assert first[0][1] == labels[16399] == 2
    index_of = {}
    for i, image in enumerate(images):
        index_of.setdefault(image.tobytes(), []).append(i)
    for image, label in first:
        assert label in labels[index_of[image.tobytes()]]


def test_second_prepare_is_a_no_op(prepared):
    first, data_dir = prepared
    mtimes = {
        f: os.path.getmtime(os.path.join(first.path, f))
        for f in os.listdir(first.path)
    }
    start = time.perf_counter()
    again = datasets.prepare("fashion_mnist", data_dir=data_dir)
    assert time.perf_counter() - start < 5
    assert not again.created
    assert again.path == first.path
    assert again.num_examples == first.num_examples
    assert mtimes == {
        f: os.path.getmtime(os.path.join(first.path, f))
        for f in os.listdir(first.path)
    }


def test_cli_says_already_prepared(prepared, capsys):
    _, data_dir = prepared
    status = cli.main(["prepare", "fashion_mnist", "--data_dir", data_dir])
    out = capsys.readouterr().out
    assert status == 0
    assert "already prepared" in out
    assert "train: 60000, test: 10000" in out


def test_load_reads_prepared_data_without_probing(prepared, monkeypatch):
    _, data_dir = prepared

    def fail(*args, **kwargs):
        raise AssertionError("internet_reachable must not be called")

    monkeypatch.setattr(
        "tf_decentral.datasets._loader.internet_reachable", fail
    )
    ds, info = datasets.load(
        "fashion_mnist", split="test[:8]", data_dir=data_dir, with_info=True
    )
    assert info.splits["test"].num_examples == 10000
    images, labels = next(iter(ds.batch(8)))
    assert images.shape == (8, 28, 28, 1)
    assert labels.shape == (8,)


def test_arrays_are_the_idx_files_in_file_order():
    x_train, y_train, x_test, y_test = datasets.fashion_mnist_arrays()
    assert x_train.shape == (60000, 28, 28, 1)
    assert x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    np.testing.assert_array_equal(
        x_test[..., 0], read_idx("t10k-images-idx3-ubyte.gz")
    )
    labels = read_idx("train-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(y_train, labels)


def test_arrays_from_a_directory_without_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="Missing"):
        datasets.fashion_mnist_arrays(tmp_path)
