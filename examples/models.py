"""Keras models used by the example trainers."""

import keras

NAMES = ("mlp", "cnn", "resnet20")


def build(name: str, input_shape, num_classes: int) -> keras.Model:
    """Returns an uncompiled classifier `name` for images of `input_shape`.

    Args:
        name: `"mlp"` (one hidden layer of 256), `"cnn"` (two conv blocks
            with batch normalization and dropout) or `"resnet20"` (He et al.
            2016's CIFAR-10 ResNet-20, the model of the D-PSGD paper's
            experiments; 0.27 M parameters).
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
    elif name == "resnet20":
        return resnet20(input_shape, num_classes)
    else:
        raise ValueError(
            f"`model` must be one of {NAMES}. Received: model={name!r}"
        )
    return keras.Sequential([keras.Input(input_shape), *layers], name=name)


def resnet20(input_shape, num_classes: int) -> keras.Model:
    """Returns ResNet-20 for small images (He et al., CVPR 2016, sec. 4.2).

    Three stages of three basic blocks with 16, 32 and 64 filters; the first
    block of stages two and three halves the resolution and projects its
    shortcut with a 1x1 convolution (option B).
    """
    inputs = keras.Input(input_shape)
    x = _conv_bn(inputs, 16, 1)
    x = keras.layers.ReLU()(x)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = keras.layers.ReLU()(_conv_bn(x, filters, strides))
            y = _conv_bn(y, filters, 1)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(
                    filters, 1, strides=strides, use_bias=False
                )(shortcut)
                shortcut = keras.layers.BatchNormalization()(shortcut)
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="resnet20")


def _conv_bn(x, filters, strides):
    x = keras.layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False
    )(x)
    return keras.layers.BatchNormalization()(x)
