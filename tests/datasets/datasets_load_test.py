"""Tests `load`'s offline behaviour, errors, and `tfds.testing.mock_data`.

Nothing here prepares a real dataset, so the module runs in seconds.
"""

import gzip
import os
import socket
import struct
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tf_decentral import datasets
from tf_decentral.datasets import __main__ as cli

FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def forbid_probe(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("internet_reachable must not be called")

    monkeypatch.setattr(
        "tf_decentral.datasets._loader.internet_reachable", fail
    )


@pytest.mark.timeout(60)
def test_offline_load_of_missing_dataset_fails_fast_and_clearly(
    tmp_path, monkeypatch
):
    probes = []
    monkeypatch.setattr(
        "tf_decentral.datasets._loader.internet_reachable",
        lambda: probes.append(1) or False,
    )
    start = time.perf_counter()
    with pytest.raises(datasets.DatasetUnavailableError) as raised:
        datasets.load("cifar10", split="train", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    assert probes == [1]
    message = str(raised.value)
    assert "Dataset cifar10" in message
    assert f"data_dir={tmp_path}" in message
    assert "internet is not reachable" in message
    assert "with internet access" in message
    assert "copy a prepared `cifar10/` directory" in message
    assert "python -m tf_decentral.datasets prepare fashion_mnist" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert not os.path.exists(tmp_path / "cifar10")


def test_online_false_never_probes(tmp_path, monkeypatch):
    forbid_probe(monkeypatch)
    with pytest.raises(
        datasets.DatasetUnavailableError, match="online=False was passed"
    ):
        datasets.load("cifar10", split="test", data_dir=tmp_path, online=False)


def test_online_load_asks_tfds_to_download(tmp_path, monkeypatch):
    calls = []

    def fake_load(name, **kwargs):
        calls.append(kwargs)
        if not kwargs["download"]:
            raise AssertionError("Dataset cifar10: could not find data")
        return "dataset"

    monkeypatch.setattr(tfds, "load", fake_load)
    got = datasets.load(
        "cifar10", split="train", data_dir=tmp_path, online=True
    )
    assert got == "dataset"
    assert [c["download"] for c in calls] == [False, True]
    assert all(c["try_gcs"] is False for c in calls)
    assert calls[-1]["as_supervised"] is True


def test_local_dataset_without_source_explains_how_to_install(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(
        "tf_decentral.datasets._fashion_mnist.DEFAULT_SOURCE",
        str(tmp_path / "nowhere"),
    )
    with pytest.raises(datasets.DatasetUnavailableError) as raised:
        datasets.load(
            "fashion_mnist", split="train", data_dir=tmp_path, online=False
        )
    message = str(raised.value)
    assert "prepare it from local files" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte.gz" in message


def test_mock_data_works_through_load(monkeypatch):
    forbid_probe(monkeypatch)
    for name, shape in [
        ("mnist", (28, 28, 1)),
        ("cifar10", (32, 32, 3)),
        ("fashion_mnist", (28, 28, 1)),
        ("mnist_5k", (28, 28, 1)),
    ]:
        with tfds.testing.mock_data(num_examples=5):
            ds, info = datasets.load(
                name, split="train", online=False, with_info=True
            )
            examples = list(ds)
        assert len(examples) == 5, name
        image, label = examples[0]
        assert image.shape == shape, name
        assert 0 <= int(label) < info.features["label"].num_classes


def test_missing_fashion_source_names_files_and_fix(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / FASHION_FILES[1]).write_bytes(b"")
    with pytest.raises(FileNotFoundError) as raised:
        datasets.prepare(
            "fashion_mnist", data_dir=tmp_path / "tfds", source=source
        )
    message = str(raised.value)
    missing = message.split("Missing: ")[1].split(". ")[0]
    assert missing.split(", ") == [
        FASHION_FILES[0],
        FASHION_FILES[2],
        FASHION_FILES[3],
    ]
    assert f"Received: source={source}" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--source" in message


def test_cli_reports_missing_source(tmp_path, capsys):
    status = cli.main(
        [
            "prepare",
            "fashion_mnist",
            "--data_dir",
            str(tmp_path / "tfds"),
            "--source",
            str(tmp_path),
        ]
    )
    assert status == 1
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_wrong_sized_source_fails_and_leaves_nothing(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in FASHION_FILES:
        shape = (5, 28, 28) if "images" in name else (5,)
        write_idx(source / name, np.zeros(shape))
    data_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match="must hold 60000 images"):
        datasets.prepare("fashion_mnist", data_dir=data_dir, source=source)
    assert not os.path.exists(data_dir / "fashion_mnist" / "3.0.1")


def test_corrupt_idx_header_is_reported(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in FASHION_FILES:
        with gzip.open(source / name, "wb") as f:
            f.write(b"not an idx file")
    with pytest.raises(ValueError, match="IDX file of unsigned bytes"):
        datasets.prepare(
            "fashion_mnist", data_dir=tmp_path / "tfds", source=source
        )


def test_prepare_rejects_other_names(tmp_path):
    with pytest.raises(ValueError, match="Received: name='cifar10'"):
        datasets.prepare("cifar10", data_dir=tmp_path)


def test_load_rejects_download_and_try_gcs(tmp_path):
    for key in ("download", "try_gcs"):
        with pytest.raises(TypeError, match=f"`{key}` must not be passed"):
            datasets.load(
                "mnist", split="train", data_dir=tmp_path, **{key: True}
            )


def test_unknown_name_is_tfds_not_found(tmp_path, monkeypatch):
    forbid_probe(monkeypatch)
    with pytest.raises(tfds.core.registered.DatasetNotFoundError):
        datasets.load("no_such_dataset_xyz", split="train", data_dir=tmp_path)


def test_default_data_dir_follows_tfds(monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", "/some/where")
    assert datasets.default_data_dir() == "/some/where"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert datasets.default_data_dir() == os.path.expanduser(
        "~/tensorflow_datasets"
    )


def test_internet_reachable_with_local_sockets():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert datasets.internet_reachable("127.0.0.1", port, timeout=2)
    # The port is closed now: refused at once.
    assert not datasets.internet_reachable("127.0.0.1", port, timeout=2)
    start = time.perf_counter()
    assert not datasets.internet_reachable("host.invalid", 443, timeout=1)
    assert time.perf_counter() - start < 2
    with pytest.raises(ValueError, match="Received: timeout=0"):
        datasets.internet_reachable(timeout=0)
