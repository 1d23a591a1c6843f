"""Splits the host CPU into logical devices, the way Keras' own tests do."""

import tensorflow as tf


def logical_cpus(num_devices: int) -> list[str]:
    """Returns `num_devices` logical CPU device names, creating them if needed.

    A multi-replica strategy needs one device per replica. On a machine without
    GPUs this splits the first physical CPU into `num_devices` logical devices
    (they share the host's cores). It must run before TensorFlow initializes
    its runtime, that is before the first op, variable or device listing.

    Args:
        num_devices: Number of logical CPU devices; at least 1.

    Returns:
        The device names, e.g. `["/device:CPU:0", "/device:CPU:1"]`.

    Raises:
        ValueError: If `num_devices` is less than 1.
        RuntimeError: If TensorFlow is already initialized with fewer logical
            CPUs than requested.

    Example:
        >>> from tf_decentral import testing
        >>> testing.logical_cpus(2)[:2]
        ['/device:CPU:0', '/device:CPU:1']
    """
    if not isinstance(num_devices, int) or num_devices < 1:
        raise ValueError(
            "`num_devices` must be an integer >= 1. "
            f"Received: num_devices={num_devices!r}"
        )
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if configured is None or len(configured) < num_devices:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices
            )
        except RuntimeError as e:
            have = len(tf.config.list_logical_devices("CPU"))
            raise RuntimeError(
                f"Cannot create {num_devices} logical CPUs: TensorFlow is "
                f"already initialized with {have}. Call "
                "`tf_decentral.testing.logical_cpus(n)` at the start of the "
                "program, before any TensorFlow op, variable or device "
                "listing."
            ) from e
    names = [d.name for d in tf.config.list_logical_devices("CPU")]
    return names[:num_devices]
