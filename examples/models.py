"""Keras models used by the example trainers."""

import keras

NAMES = ("mlp", "cnn")


def build(name: str, input_shape, num_classes: int) -> keras.Model:
    """Returns an uncompiled classifier `name` for images of `input_shape`.

    Args:
        name: `"mlp"` (one hidden layer of 256) or `"cnn"` (two conv blocks
            with batch normalization and dropout).
        input_shape: Shape of one example, e.g. `(28, 28, 1)`.
        num_classes: Number of output logits.

    Raises:
        ValueError: If `name` is unknown.
    """
    if name == "mlp":
        layers = [
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(num_classes),
        ]
    elif name == "cnn":
        layers = [
            keras.layers.Conv2D(32, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(num_classes),
        ]
    else:
        raise ValueError(
            f"`model` must be one of {NAMES}. Received: model={name!r}"
        )
    return keras.Sequential([keras.Input(input_shape), *layers], name=name)
