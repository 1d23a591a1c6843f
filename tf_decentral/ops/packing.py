"""Packs a list of tensors into one flat buffer and back.

Communication and mixing cost a fixed overhead per op, so the strategies move
all variables of a step as one buffer per dtype instead of one tensor each.
"""

import collections
from collections.abc import Sequence

import tensorflow as tf


def pack(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """Returns the tensors flattened and concatenated into one 1-D tensor.

    Args:
        tensors: Non-empty list of tensors of one dtype.

    Raises:
        ValueError: If `tensors` is empty or mixes dtypes.
    """
    if not tensors:
        raise ValueError("`tensors` must not be empty. Received: []")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise ValueError(
            "`tensors` must share one dtype. "
            f"Received: dtypes={sorted(d.name for d in dtypes)}"
        )
    if len(tensors) == 1:
        return tf.reshape(tensors[0], [-1])
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def unpack(buffer: tf.Tensor, shapes: Sequence[tf.TensorShape]) -> list:
    """Inverse of `pack`: splits `buffer` into tensors of the given shapes.

    Args:
        buffer: 1-D tensor made by `pack`.
        shapes: Fully defined static shapes of the packed tensors, in order.

    Returns:
        A list of tensors, one per shape.
    """
    sizes = [int(tf.TensorShape(s).num_elements()) for s in shapes]
    if len(sizes) == 1:
        return [tf.reshape(buffer, shapes[0])]
    parts = tf.split(buffer, sizes, axis=0)
    return [tf.reshape(p, s) for p, s in zip(parts, shapes)]


def group_by_dtype(variables) -> dict:
    """Returns `{base dtype: [variables of that dtype]}`, in first-seen order.

    `pack` needs one dtype per buffer: mixing, exchanging and averaging move
    one packed buffer per group.

    Raises:
        TypeError: If an element has no `dtype`.

    Example:
        >>> import tensorflow as tf
        >>> groups = group_by_dtype(
        ...     [tf.Variable(1.0), tf.Variable(2), tf.Variable(3.0)]
        ... )
        >>> {d.name: len(g) for d, g in groups.items()}
        {'float32': 2, 'int32': 1}
    """
    groups = collections.defaultdict(list)
    for v in variables:
        dtype = getattr(v, "dtype", None)
        if not isinstance(dtype, tf.dtypes.DType):
            raise TypeError(
                "Every element must be a variable or tensor with a `dtype`. "
                f"Received: {v!r}"
            )
        groups[dtype.base_dtype].append(v)
    return dict(groups)
