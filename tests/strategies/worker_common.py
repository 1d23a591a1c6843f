"""What the multi-worker test scripts share (imported by path, not pytest).

The linear-regression data split the same way by every worker script and its
test, and the lookup of Keras' step function for graph checks. Importing it
enables `faulthandler`: a worker that TF crashes (SIGSEGV, SIGABRT) prints
every thread's Python stack, so a crash says where it happened.
"""

import faulthandler
import inspect

import numpy as np
import tensorflow as tf

faulthandler.enable()

DIM = 8
PER_WORKER_BATCH = 16


def data(num_workers, steps, seed=0):
    """The global data of `steps` global batches (shared with the test)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps * num_workers * PER_WORKER_BATCH, DIM))
    y = x @ rng.normal(size=(DIM, 1)) + 0.3
    return x.astype("float32"), y.astype("float32")


def worker_shard(x, y, node, num_workers):
    """Rows of worker `node` in every global batch, as single-host shards."""
    shape = (-1, num_workers, PER_WORKER_BATCH)
    xs = x.reshape(*shape, DIM)[:, node].reshape(-1, DIM)
    ys = y.reshape(*shape, 1)[:, node].reshape(-1, 1)
    return xs, ys


def tf_function_in(function, name):
    """The `tf.function` named `name` that a chain of Python wrappers (ours,
    Keras') around Keras' train function closes over."""
    seen, todo = set(), [function]
    while todo:
        f = todo.pop()
        if id(f) in seen:
            continue
        seen.add(id(f))
        if isinstance(f, tf.types.experimental.PolymorphicFunction):
            if f.python_function.__name__ == name:
                return f
            continue
        if callable(f):
            todo.append(inspect.unwrap(f))
            cells = getattr(f, "__closure__", None) or ()
            todo.extend(c.cell_contents for c in cells)
    raise ValueError(f"no tf.function {name} inside {function!r}")
