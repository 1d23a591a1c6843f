"""Checkpoints of `AsyncGossipStrategy` on a cluster: one writer, one state.

Every worker runs the same script, so every worker has the same
`BackupAndRestore(backup_dir)` and `ModelCheckpoint(filepath)`. Node 0 (the
chief, else worker 0) is the only one that writes there, and the only one
that reads the backup; the others write into scratch directories that are
removed (`tf_decentral.strategies._keras_hooks`). Node 0 writes its own
model: AD-PSGD has no global barrier, so no consensus average is at hand
without stopping every worker; node 0's model is one of the copies the run
averages pairwise, close to the others (see `consensus_distance`).

After BackupAndRestore's restore, at the start of a model's first `fit` in
the process (a job started or restarted), node 0 publishes the *training
state* it restored (or its fresh one, when there was no backup): the
model's weights, its optimizer's variables (the step count and slots), and
the epoch to resume at, in variables on node 0's own server. Every other
worker waits for them and takes them. So every worker resumes at the same
epoch, from one state: node 0's last backup. Only node 0 reads the backup,
so no worker reads a file another one is writing; the workers of the
previous run must have stopped (a worker whose peer died trains on). In a
later `fit` of the same model in the process nothing is sent: the workers
already average their copies, and each keeps its own state.
"""

import time

import numpy as np
import tensorflow as tf

from tf_decentral import _keras_private
from tf_decentral.ops import packing

_PREFIX = "tf_decentral/async_gossip/restored"
_POLL_SECONDS = 0.02
_NO_EPOCH = -1


def _handle(device, dtype, shape, name):
    with tf.device(device):
        return tf.raw_ops.VarHandleOp(
            dtype=dtype, shape=shape, container="", shared_name=name
        )


def training_variables(model) -> list:
    """Returns `model`'s weights, then its optimizer's variables.

    Builds the optimizer first if it is not built yet (as BackupAndRestore
    does before it loads), so that every worker has the same variables
    whether or not it restored anything.
    """
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    variables = list(model.weights)
    if optimizer is not None:
        variables += list(optimizer.variables)
    return variables


class TrainingState:
    """A model's training state, published on one server under `name`.

    One buffer per dtype (the variables packed in order), the epoch to
    resume at (`-1`: none) and a flag set last, all kept on `device` under
    fixed `shared_name`s, so every worker's client can read them by name.

    Args:
        model: A built Keras model (with its optimizer, if compiled).
        device: The server device that holds the published state.
        name: A name unique to this restore in the program, the same on
            every worker.
    """

    def __init__(self, model, device, name):
        self.model = model
        self.device = device
        groups = {}
        for v in training_variables(model):
            groups.setdefault(tf.as_dtype(v.dtype).base_dtype, []).append(v)
        # (dtype, the variables of that dtype in model order) per buffer.
        self.groups = list(groups.items())
        prefix = f"{_PREFIX}/{name}"
        self.buffers = [
            _handle(device, dtype, [None], f"{prefix}/g{g}")
            for g, (dtype, _) in enumerate(self.groups)
        ]
        self.epoch = _handle(device, tf.int64, [], f"{prefix}/epoch")
        self.ready = _handle(device, tf.int64, [], f"{prefix}/ready")

    def publish(self) -> None:
        """Writes this worker's state (the flag last)."""
        epoch = _keras_private.initial_epoch(self.model)
        with tf.device(self.device):
            for handle, (_, variables) in zip(self.buffers, self.groups):
                values = [tf.convert_to_tensor(v.value) for v in variables]
                tf.raw_ops.AssignVariableOp(
                    resource=handle, value=packing.pack(values)
                )
            tf.raw_ops.AssignVariableOp(
                resource=self.epoch,
                value=tf.constant(
                    _NO_EPOCH if epoch is None else int(epoch), tf.int64
                ),
            )
            tf.raw_ops.AssignVariableOp(
                resource=self.ready, value=tf.constant(1, tf.int64)
            )

    def is_published(self) -> bool:
        with tf.device(self.device):
            return bool(
                tf.raw_ops.VarIsInitializedOp(resource=self.ready).numpy()
            )

    def take(self, who: str, owner: str) -> None:
        """Sets the model, its optimizer and the epoch to resume at to the
        published state.

        Raises:
            ValueError: If the published state has other sizes than this
                worker's model and optimizer (`who`: this worker, `owner`:
                the publisher, for the message).
        """
        with tf.device(self.device):
            buffers = [
                tf.raw_ops.ReadVariableOp(resource=h, dtype=dtype).numpy()
                for h, (dtype, _) in zip(self.buffers, self.groups)
            ]
            epoch = int(
                tf.raw_ops.ReadVariableOp(
                    resource=self.epoch, dtype=tf.int64
                ).numpy()
            )
        ours = [
            sum(int(np.prod(v.shape)) for v in variables)
            for _, variables in self.groups
        ]
        theirs = [int(b.size) for b in buffers]
        if ours != theirs:
            raise ValueError(
                "Every worker must build the same model and optimizer to "
                f"resume from {owner}'s backup. Received: {who} has "
                f"weights and optimizer variables of sizes {ours} (by "
                f"dtype: {[d.name for d, _ in self.groups]}), {owner} "
                f"published {theirs}."
            )
        for (_, variables), buffer in zip(self.groups, buffers):
            parts = packing.unpack(
                tf.constant(buffer), [v.shape for v in variables]
            )
            for v, part in zip(variables, parts):
                v.assign(part)
        _keras_private.set_initial_epoch(
            self.model, None if epoch == _NO_EPOCH else epoch
        )

    def wait_and_take(self, timeout: float, who: str, owner: str) -> None:
        """Waits up to `timeout` seconds for the state, then takes it.

        Raises:
            RuntimeError: If it is not published within `timeout`, or its
                server cannot be reached.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                published = self.is_published()
            except tf.errors.OpError as e:
                raise RuntimeError(
                    f"AsyncGossipStrategy on {who} resumes from {owner}'s "
                    "backup (the checkpoint writer's), but cannot reach "
                    f"{owner}: {type(e).__name__}: {e.message[:300]}. Restart"
                    " every worker of the job."
                ) from e
            if published:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"AsyncGossipStrategy on {who} waited {timeout:g} s for "
                    f"{owner} to restore its BackupAndRestore backup (every "
                    "worker resumes from it). Every worker must run the same"
                    " program with BackupAndRestore; check the log of "
                    f"{owner}."
                )
            time.sleep(_POLL_SECONDS)
        self.take(who, owner)
