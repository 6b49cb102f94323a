"""Small ready-made Keras models: the seed CNN of the exercise, and giving it a PyTorch twin's weights.

Example:
    >>> model = keras_seed_cnn(seed=0)                                   # doctest: +SKIP
    >>> [layer.name for layer in model.layers][1:7]                      # doctest: +SKIP
    ['L1', 'L2', 'L3', 'L4', 'L5', 'L6']
    >>> copy_seed_weights(gradsight.seed_cnn("same"), model)   # the same numbers in both  # doctest: +SKIP

The architecture is the one of ``adapters/torch/zoo.py`` with ``padding="same"``: Keras pads 'same' with the
extra pixel at the bottom/right, as ``TFSamePad2d`` does there.
"""

from __future__ import annotations

from ...models.names import SEED_CHANNELS, SEED_INPUT, SEED_KERNELS, SEED_STRIDES
from .backend import import_keras


def keras_seed_cnn(seed: int = 0, classes: int = 10):
    """The exercise's CNN in Keras: Conv2D(padding='same', activation='relu') L1..L6, global average pooling,
    Dense softmax. Glorot-uniform kernels seeded from ``seed``, zero biases (Keras' defaults)."""
    keras = import_keras()
    inputs = keras.Input(shape=(SEED_INPUT[1], SEED_INPUT[2], SEED_INPUT[0]), name="image")
    x = inputs
    for i, (k, s, c) in enumerate(zip(SEED_KERNELS, SEED_STRIDES, SEED_CHANNELS), start=1):
        x = keras.layers.Conv2D(c, k, strides=s, padding="same", activation="relu", name=f"L{i}",
                                kernel_initializer=keras.initializers.GlorotUniform(seed=seed * 100 + i))(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="dense",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed=seed * 100 + 7))(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def copy_seed_weights(torch_net, keras_model) -> None:
    """Give a Keras seed CNN the weights of a PyTorch one (OIHW kernels become HWIO)."""
    for i in range(1, 7):
        conv = getattr(torch_net, f"L{i}").conv
        keras_model.get_layer(f"L{i}").set_weights([conv.weight.detach().permute(2, 3, 1, 0).numpy(),
                                                     conv.bias.detach().numpy()])
    dense = torch_net.head.dense
    keras_model.get_layer("dense").set_weights([dense.weight.detach().T.numpy(), dense.bias.detach().numpy()])
