"""Argument checks shared by the topology constructors (private)."""

import numbers

import numpy as np


def check_int(value: object, arg_name: str, *, minimum: int) -> int:
    """Returns `value` as an `int` after checking it is an integer in range.

    Args:
        value: The argument to check. `bool` is rejected even though it is an
            `int` subclass.
        arg_name: The argument's name, quoted in the error messages.
        minimum: The smallest allowed value.

    Returns:
        `value` as a Python `int`.

    Raises:
        TypeError: If `value` is not an integer.
        ValueError: If `value` is smaller than `minimum`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{arg_name}` must be an integer. "
            f"Received: {arg_name}={value!r} of type {type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(
            f"`{arg_name}` must be an integer >= {minimum}. "
            f"Received: {arg_name}={value}"
        )
    return int(value)


def as_float_array(value: object, arg_name: str) -> np.ndarray:
    """Returns a new float64 array of the real numbers in `value`.

    Args:
        value: Array-like of booleans, integers or real floats.
        arg_name: The argument's name, quoted in the error message.

    Returns:
        A float64 copy of `value`.

    Raises:
        TypeError: If `value` holds anything else (strings, complex numbers,
            ragged nested sequences, ...).
    """
    message = (
        f"`{arg_name}` must be an array-like of real numbers. "
        f"Received: {arg_name} of type {type(value).__name__}"
    )
    try:
        array = np.asarray(value)
    except ValueError as err:  # Ragged nested sequences.
        raise TypeError(message) from err
    if array.dtype.kind not in "biufO":
        raise TypeError(f"{message} with dtype {array.dtype}")
    try:
        return array.astype(np.float64)
    except (TypeError, ValueError) as err:  # Objects that are not numbers.
        raise TypeError(message) from err
