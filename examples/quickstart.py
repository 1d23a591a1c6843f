"""tf_decentral in 30 lines: plain Keras, with a gossip strategy swapped in."""

import keras

import tf_decentral as tfd

tfd.testing.logical_cpus(4)  # 4 replicas on the CPU (or use 4 GPUs as is)
strategy = tfd.GossipStrategy("ring")  # D-PSGD: replicas mix with neighbours

# tfds.load with an offline fallback (Debian's Fashion-MNIST); whole splits.
x, y = tfd.datasets.load("fashion_mnist", split="train", batch_size=-1)
x_test, y_test = tfd.datasets.load("fashion_mnist", split="test", batch_size=-1)
x, x_test = x / 255, x_test / 255

with strategy.scope():
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

model.fit(
    x,
    y,
    batch_size=128,
    epochs=2,
    callbacks=[tfd.callbacks.ConsensusMonitor(every_n_steps=50)],
)
strategy.average_weights(model)  # every copy := the average
print("test accuracy:", model.evaluate(x_test, y_test, verbose=0)[1])
model.save("quickstart.keras")  # saves the average model
