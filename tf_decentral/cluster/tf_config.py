"""`TF_CONFIG`: the JSON that tells each process its place in a cluster.

Pure Python: this module never imports TensorFlow or Keras, so launchers and
tools can read a cluster description cheaply.

Terms, as TensorFlow uses them:

* **Job**: a named list of tasks, e.g. `"worker"`, `"chief"`, `"ps"`.
* **Task**: one process, named `job:index`, e.g. `worker:1`; its **address**
  is the `"host:port"` its server listens on.
* **Chief**: the task that saves checkpoints and summaries: the `"chief"` task
  if the cluster has one, otherwise `worker:0`.
* **Worker index**: a task's rank among the training tasks in TensorFlow's
  order, the chief first and then the workers (`chief:0, worker:0, ...`).

A `TF_CONFIG` looks like::

    {"cluster": {"worker": ["host0:2222", "host1:2222"]},
     "task": {"type": "worker", "index": 1}}

Longer than 500 lines because every field of `TF_CONFIG` is validated here
with a message that says what was received and what to write instead; the
messages are most of it.
"""

import dataclasses
import difflib
import json
import os
from collections.abc import Mapping

# How many characters of a bad `TF_CONFIG` an error message quotes.
_MAX_QUOTED_CHARS = 200
# A TF_CONFIG of a cluster this package can run is far below this.
_MAX_TF_CONFIG_CHARS = 1_000_000
_EXAMPLE = (
    '{"cluster": {"worker": ["host0:2222", "host1:2222"]}, '
    '"task": {"type": "worker", "index": 0}}'
)
# The job that may be absent from `cluster` (TensorFlow's convention: an
# evaluator runs beside the cluster, not in it).
_SIDE_JOBS = ("evaluator",)
_TRAINING_JOBS = ("chief", "worker")


def _quote(value: object, limit: int = _MAX_QUOTED_CHARS) -> str:
    """Returns `repr(value)`, cut to about `limit` characters."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters in all)"


def _excerpt(text: str, pos: int, width: int = 30) -> str:
    """Returns the text around character `pos`, with `>>>` marking `pos`."""
    start = max(0, pos - width)
    before = ("..." if start else "") + text[start:pos]
    end = pos + width
    after = text[pos:end] + ("..." if end < len(text) else "")
    return f"{before}>>>{after}"


# Jobs that TensorFlow's strategies know. A cluster with another job name is
# almost always a typo ("wrker"), which TensorFlow would silently ignore.
KNOWN_JOBS = ("chief", "worker", "ps", "evaluator")
RPC_LAYERS = ("grpc",)
# Host names that always name this machine's loopback interface.
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_ASCII_DIGITS = frozenset("0123456789")
_HOST_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"
)


def _address_problem(address: object) -> str | None:
    """Returns what is wrong with a "host:port" address, or None."""
    if not isinstance(address, str) or ":" not in address:
        return 'it is not a "host:port" string'
    if "://" in address:
        return (
            "it has a scheme: TF_CONFIG addresses are plain host:port (the "
            'protocol is "rpc_layer")'
        )
    if address != address.strip() or any(c.isspace() for c in address):
        return "it contains white space"
    host, _, port = address.rpartition(":")
    if not port or not set(port) <= _ASCII_DIGITS or not 0 < int(port) < 65536:
        return "its port is not a number in [1, 65535] (ASCII digits)"
    if host.startswith("[") and host.endswith("]") and len(host) > 2:
        inner = host[1:-1]
        if set(inner) <= frozenset("0123456789abcdefABCDEF:.") and ":" in inner:
            return None
        return "its bracketed IPv6 address is not valid"
    if ":" in host:
        return (
            "it looks like an IPv6 address without brackets: write "
            '"[::1]:2222", not "::1:2222"'
        )
    if not host or not set(host) <= _HOST_CHARACTERS:
        return "its host is not a host name or IPv4 address (ASCII only)"
    return None


def _check_address(address: object, job: str, index: int) -> str:
    problem = _address_problem(address)
    if problem is None:
        return address
    raise ValueError(
        f'Every address of job "{job}" must be a "host:port" string with a '
        f"port in [1, 65535]; {job}[{index}] is not: {problem}. Received: "
        f"{job}[{index}]={_quote(address)}. Write addresses like "
        '"localhost:2222", "10.0.0.1:2222" or "[fd00::1]:2222".'
    )


def _endpoint(address: str) -> str:
    """The server an address reaches: loopback aliases are one endpoint."""
    host, _, port = address.rpartition(":")
    if host.lower() in _LOOPBACK_NAMES or host.startswith("127."):
        host = "loopback"
    return f"{host.lower()}:{port}"


def _check_job_name(job: object) -> None:
    if not isinstance(job, str) or not job:
        raise ValueError(
            "Every job name in `cluster` must be a non-empty string. "
            f"Received: job name {_quote(job)}"
        )
    if job not in KNOWN_JOBS:
        close = difflib.get_close_matches(job, KNOWN_JOBS, n=1)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        raise ValueError(
            f"Every job name in `cluster` must be one of {list(KNOWN_JOBS)}."
            f" Received: job name {_quote(job)}.{hint}"
        )


def _normalize_cluster(cluster: object) -> dict[str, tuple[str, ...]]:
    """Validates `cluster`; returns a copy mapping job -> tuple of addresses."""
    if not isinstance(cluster, Mapping):
        raise ValueError(
            '`cluster` must map job names to lists of "host:port" addresses. '
            f"Received: cluster={_quote(cluster)}. Example: {_EXAMPLE}"
        )
    if isinstance(cluster, _NormalizedCluster):
        return cluster
    normalized = _NormalizedCluster()
    for job, addresses in cluster.items():
        _check_job_name(job)
        if not isinstance(addresses, (list, tuple)):
            raise ValueError(
                f'Job "{job}" must be a list of "host:port" strings. '
                f"Received: {job}={_quote(addresses)}. "
                f'Write it as "{job}": ["host0:2222", "host1:2222"].'
            )
        normalized[job] = tuple(
            _check_address(address, job, index)
            for index, address in enumerate(addresses)
        )
    owners = {}
    for job, addresses in normalized.items():
        for index, address in enumerate(addresses):
            endpoint = _endpoint(address)
            if endpoint in owners:
                owner, owner_address = owners[endpoint]
                raise ValueError(
                    "Every task must have its own address. Received: "
                    f'{owner} at "{owner_address}" and {job}:{index} at '
                    f'"{address}", the same server. Give each task a '
                    "distinct host or port."
                )
            owners[endpoint] = (f"{job}:{index}", address)
    num_training = sum(len(normalized.get(job, ())) for job in _TRAINING_JOBS)
    if num_training == 0:
        raise ValueError(
            'The cluster must have at least one "worker" or "chief" task. '
            f"Received: cluster={_quote(normalized)}. "
            'Add a "worker" job with at least one address.'
        )
    if len(normalized.get("chief", ())) > 1:
        raise ValueError(
            'The cluster must have at most one "chief" task. Received: '
            f"chief={list(normalized['chief'])}. Make the others workers."
        )
    return normalized


class _NormalizedCluster(dict):
    """A cluster `_normalize_cluster` has checked: job -> address tuple.

    Building one `ClusterConfig` per task of a large cluster validates the
    cluster once, not once per task.
    """


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """The parsed `TF_CONFIG` of one task: the cluster and this task's place.

    Construct it with `parse_tf_config` or `from_env`; the constructor
    validates its arguments the same way.

    Attributes:
        cluster: Job name -> addresses (`"host:port"`) of its tasks, in
            index order.
        task_type: This task's job, e.g. `"worker"`.
        task_id: This task's index within its job, from 0.
        rpc_layer: The optional `"rpc_layer"` of the `TF_CONFIG` (e.g.
            `"grpc"`), or `None`.

    Example:
        >>> from tf_decentral import cluster
        >>> config = cluster.parse_tf_config(
        ...     '{"cluster": {"chief": ["h0:2222"], '
        ...     '"worker": ["h1:2222", "h2:2222"], "ps": ["h3:2222"]}, '
        ...     '"task": {"type": "worker", "index": 1}}'
        ... )
        >>> config.num_workers, config.has_chief, config.num_ps
        (2, True, 1)
        >>> config.address, config.worker_index, config.is_chief
        ('h2:2222', 2, False)
    """

    cluster: dict[str, tuple[str, ...]] = dataclasses.field(hash=False)
    task_type: str
    task_id: int
    rpc_layer: str | None = None

    def __post_init__(self):
        cluster = _normalize_cluster(self.cluster)
        object.__setattr__(self, "cluster", cluster)
        if not isinstance(self.task_type, str) or not self.task_type:
            raise ValueError(
                "The task type must be a non-empty string such as "
                f'"worker". Received: task_type={_quote(self.task_type)}'
            )
        if self.task_type not in cluster and self.task_type not in _SIDE_JOBS:
            raise ValueError(
                "The task type must be one of the cluster's jobs "
                f"{list(cluster)}. Received: task_type={self.task_type!r}. "
                "Fix the task's "
                f'"type", or add a "{self.task_type}" job to the cluster.'
            )
        if isinstance(self.task_id, bool) or not isinstance(self.task_id, int):
            raise ValueError(
                "The task index must be an integer, written without quotes. "
                f"Received: task_id={_quote(self.task_id)}"
            )
        size = len(cluster.get(self.task_type, ()))
        in_range = 0 <= self.task_id < size
        if self.task_type not in cluster:
            in_range = self.task_id == 0
            size = 1
        if not in_range:
            raise ValueError(
                f"The task index must be in [0, {size}) because job "
                f'"{self.task_type}" has {size} task(s). Received: '
                f"task_id={self.task_id}. Use an index below {size}, or add "
                f'addresses to the "{self.task_type}" job.'
            )
        if self.rpc_layer is not None and self.rpc_layer not in RPC_LAYERS:
            raise ValueError(
                f"`rpc_layer` must be one of {list(RPC_LAYERS)} or absent "
                "(TensorFlow's servers speak gRPC only). Received: "
                f"rpc_layer={_quote(self.rpc_layer)}"
            )

    @classmethod
    def every_task(cls, cluster) -> list["ClusterConfig"]:
        """Returns the config of every task of `cluster`, in TF's job order.

        Chief, workers, ps, then evaluator tasks. The cluster is validated
        once for all of them.
        """
        cluster = _normalize_cluster(cluster)
        return [
            cls(cluster, job, index)
            for job in KNOWN_JOBS
            for index in range(len(cluster.get(job, ())))
        ]

    @property
    def num_workers(self) -> int:
        """The number of `"worker"` tasks (the chief is not counted)."""
        return len(self.cluster.get("worker", ()))

    @property
    def has_chief(self) -> bool:
        """Whether the cluster has a `"chief"` task."""
        return bool(self.cluster.get("chief"))

    @property
    def num_ps(self) -> int:
        """The number of `"ps"` (parameter server) tasks."""
        return len(self.cluster.get("ps", ()))

    @property
    def task_name(self) -> str:
        """This task as `"job:index"`, e.g. `"worker:1"`."""
        return f"{self.task_type}:{self.task_id}"

    @property
    def address(self) -> str | None:
        """This task's `"host:port"`; `None` for an evaluator outside it."""
        addresses = self.cluster.get(self.task_type)
        return addresses[self.task_id] if addresses else None

    @property
    def is_chief(self) -> bool:
        """Whether this task is the chief: `chief:0`, else `worker:0`."""
        if self.task_type == "chief":
            return True
        return (
            self.task_type == "worker"
            and self.task_id == 0
            and not self.has_chief
        )

    @property
    def worker_index(self) -> int:
        """This task's rank among the chief and the workers, chief first.

        Raises:
            ValueError: If this task is neither the chief nor a worker.
        """
        if self.task_type == "chief":
            return 0
        if self.task_type == "worker":
            return self.task_id + int(self.has_chief)
        raise ValueError(
            "`worker_index` is defined only for chief and worker tasks. "
            f"Received: task_type={self.task_type!r}. Check `task_type` "
            "before asking for the worker index."
        )

    def to_cluster_spec_dict(self) -> dict[str, list[str]]:
        """Returns the cluster as `{job: [address, ...]}`.

        The result can be passed to `tf.train.ClusterSpec`.
        """
        return {job: list(addresses) for job, addresses in self.cluster.items()}

    def to_json(self) -> str:
        """Returns the `TF_CONFIG` JSON of this task.

        Example:
            >>> from tf_decentral import cluster
            >>> config = cluster.ClusterConfig({"worker": ["h:1"]}, "worker", 0)
            >>> print(config.to_json())  # doctest: +NORMALIZE_WHITESPACE
            {"cluster": {"worker": ["h:1"]},
             "task": {"type": "worker", "index": 0}}
        """
        config = {
            "cluster": self.to_cluster_spec_dict(),
            "task": {"type": self.task_type, "index": self.task_id},
        }
        if self.rpc_layer is not None:
            config["rpc_layer"] = self.rpc_layer
        return json.dumps(config)


def training_tasks(cluster: Mapping) -> tuple[tuple[str, int], ...]:
    """Returns `(job, index)` of every training task, in TensorFlow's order.

    The chief first (if any), then the workers: the order in which
    `MultiWorkerMirroredStrategy` numbers its workers (`worker_index`), and
    the order of the gossip nodes. Other jobs (ps, evaluator) are left out.

    Args:
        cluster: Job name -> addresses (a list, or a dict index -> address as
            `tf.train.ClusterSpec.as_dict` gives for sparse jobs).

    Example:
        >>> from tf_decentral import cluster
        >>> cluster.training_tasks(
        ...     {"worker": ["h1:1", "h2:1"], "chief": ["h0:1"], "ps": ["p:1"]}
        ... )
        (('chief', 0), ('worker', 0), ('worker', 1))
    """
    tasks = []
    for job in _TRAINING_JOBS:
        addresses = cluster.get(job) or ()
        if isinstance(addresses, Mapping):
            indices = sorted(addresses)
        else:
            indices = range(len(addresses))
        tasks.extend((job, int(i)) for i in indices)
    return tuple(tasks)


def _decode_json(text) -> object:
    """Returns the decoded JSON of `TF_CONFIG`; ValueError if it is not."""
    if not isinstance(text, (str, bytes, bytearray)):
        raise TypeError(
            "`text` must be a JSON string. "
            f"Received: text of type {type(text).__name__}"
        )
    if len(text) > _MAX_TF_CONFIG_CHARS:
        raise ValueError(
            f"`TF_CONFIG` must be at most {_MAX_TF_CONFIG_CHARS} characters. "
            f"Received: {len(text)} characters starting {_quote(text, 60)}."
        )
    try:
        return json.loads(text)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"`TF_CONFIG` must be UTF-8 text. Received: bytes that are not "
            f"UTF-8 ({e.reason} at byte {e.start}): {_quote(text)}."
        ) from None
    except RecursionError:
        raise ValueError(
            "`TF_CONFIG` must be a flat JSON object, not nested this deeply."
            f" Received: TF_CONFIG={_quote(text)}. Expected something like: "
            f"{_EXAMPLE}"
        ) from None
    except json.JSONDecodeError as e:
        hint = ""
        if "'" in e.doc and '"' not in e.doc:
            hint = " JSON needs double quotes around strings."
        raise ValueError(
            f"`TF_CONFIG` must be valid JSON, but parsing failed: {e.msg} at "
            f"line {e.lineno}, column {e.colno} (char {e.pos}), here: "
            f"{_excerpt(e.doc, e.pos)!r}. Received: "
            f"TF_CONFIG={_quote(e.doc)}.{hint} Expected something like: "
            f"{_EXAMPLE}"
        ) from None


def _load_json_object(text) -> dict:
    """Returns `TF_CONFIG` decoded, checked to have "cluster" and "task"."""
    config = _decode_json(text)
    if not isinstance(config, dict):
        raise ValueError(
            '`TF_CONFIG` must be a JSON object with keys "cluster" and '
            f'"task". Received: a JSON {type(config).__name__}: '
            f"{_quote(config)}. Expected something like: {_EXAMPLE}"
        )
    if "cluster" not in config:
        raise ValueError(
            '`TF_CONFIG` must have a "cluster" key mapping job names to '
            f"lists of addresses. Received: keys {sorted(config)} in "
            f"TF_CONFIG={_quote(text)}. Expected something like: {_EXAMPLE}"
        )
    if "task" not in config:
        raise ValueError(
            '`TF_CONFIG` must have a "task" key saying which task this '
            f"process is. Received: keys {sorted(config)} in "
            f"TF_CONFIG={_quote(text)}. Add e.g. "
            '"task": {"type": "worker", "index": 0}.'
        )
    return config


def parse_tf_config(text: str) -> ClusterConfig:
    """Parses a `TF_CONFIG` JSON string.

    Args:
        text: The JSON, with a `"cluster"` object (job -> list of
            `"host:port"`) and a `"task"` object (`"type"`, `"index"`).
            An optional `"rpc_layer"` string is kept; other keys (such as
            `"environment"`) are ignored.

    Returns:
        The validated `ClusterConfig`.

    Raises:
        ValueError: If `text` is not valid JSON or does not describe a valid
            cluster and task; the message says what was wrong and how to
            fix it.

    Example:
        >>> from tf_decentral import cluster
        >>> config = cluster.parse_tf_config(
        ...     '{"cluster": {"worker": ["localhost:2222", "localhost:2223"]},'
        ...     ' "task": {"type": "worker", "index": 0}}'
        ... )
        >>> config.task_name, config.is_chief, config.num_workers
        ('worker:0', True, 2)
    """
    config = _load_json_object(text)
    task = config["task"]
    if not isinstance(task, dict):
        raise ValueError(
            '`TF_CONFIG["task"]` must be an object with "type" and "index". '
            f"Received: task={_quote(task)}. Write it as "
            '"task": {"type": "worker", "index": 0}.'
        )
    for key, example in (("type", '"worker"'), ("index", "0")):
        if key not in task:
            raise ValueError(
                f'`TF_CONFIG["task"]` must have a "{key}". '
                f"Received: task={_quote(task)}. Add e.g. "
                f'"{key}": {example}.'
            )
    return ClusterConfig(
        cluster=config["cluster"],
        task_type=task["type"],
        task_id=task["index"],
        rpc_layer=config.get("rpc_layer"),
    )


def from_env(
    environ: Mapping[str, str] = os.environ,
) -> ClusterConfig | None:
    """Parses the `TF_CONFIG` environment variable, if it is set.

    Args:
        environ: The environment to read; defaults to `os.environ`.

    Returns:
        The `ClusterConfig`, or `None` if `TF_CONFIG` is unset, blank or
        `{}` (TensorFlow then runs without a cluster).

    Raises:
        ValueError: If `TF_CONFIG` is set but invalid; see
            `parse_tf_config`.

    Example:
        >>> from tf_decentral import cluster
        >>> cluster.from_env({}) is None
        True
        >>> cluster.from_env(
        ...     {"TF_CONFIG": cluster.ClusterConfig(
        ...         {"worker": ["h0:1", "h1:1"]}, "worker", 1).to_json()}
        ... ).address
        'h1:1'
    """
    text = environ.get("TF_CONFIG", "")
    if not text.strip() or _decode_json(text) == {}:
        return None
    return parse_tf_config(text)
