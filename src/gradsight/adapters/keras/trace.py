"""Analytic receptive fields of a Keras model, read from its layers' configurations.

Example:
    >>> import keras                                                                  # doctest: +SKIP
    >>> report = trace_fields(keras.applications.ResNet50(weights=None), (3, 224, 224))  # doctest: +SKIP
    >>> report["conv5_block3_out"].size                                               # doctest: +SKIP
    (483, 483)

The functional graph is walked in the model's own (topological) order; each layer's output field comes from
its inputs' fields and its configuration. Keras/TensorFlow ``padding='same'`` depends on the size of the map
it pads (the extra pixel goes bottom/right), so sizes are propagated alongside the fields. Nested models are
walked recursively (their layers are reported as ``outer.inner``). Unknown layers are refused by name.
"""

from __future__ import annotations

import math

import keras

from ...errors import BadInputError, UnsupportedGeometryError
from ...receptive.algebra import Field, LayerGeometry
from ...receptive.report import FieldReport, LayerField
from .layers import require_graph

L = keras.layers
_PER_POSITION = (L.BatchNormalization, L.Activation, L.ReLU, L.LeakyReLU, L.PReLU, L.ELU, L.Softmax, L.Dropout,
                 L.SpatialDropout1D, L.SpatialDropout2D, L.GaussianNoise, L.GaussianDropout, L.Rescaling,
                 L.Normalization, L.LayerNormalization, L.Identity, L.ActivityRegularization)
_MERGES = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum, L.Concatenate)
_GLOBAL = (L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D,
           L.Flatten)
_CONVS = (L.Conv1D, L.Conv2D, L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D, L.SeparableConv2D)
_POOLS = (L.MaxPooling1D, L.MaxPooling2D, L.AveragePooling1D, L.AveragePooling2D)


def _tuple(value, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    return tuple(value) if len(value) == n else tuple(value) * n


def _window(layer, sizes, kernel, stride, dilation, padding: str):
    """Per-axis (left padding, output size) of a sliding window, Keras/TF rules."""
    lefts, outs = [], []
    for n, k, s, d in zip(sizes, kernel, stride, dilation):
        reach = d * (k - 1) + 1
        if padding == "valid":
            if n < reach:
                raise BadInputError("input size", expected=f"at least {reach} pixels at layer {layer.name!r}",
                                    got=f"{n}", fix="pass a larger input size")
            lefts.append(0)
            outs.append((n - reach) // s + 1)
        elif padding == "same":
            out = math.ceil(n / s)
            total = max((out - 1) * s + reach - n, 0)
            lefts.append(total // 2)
            outs.append(out)
        elif padding == "causal":
            lefts.append(reach - 1)
            outs.append(n)
        else:
            raise UnsupportedGeometryError(f"layer {layer.name!r}: padding {padding!r} is not known to gradsight")
    return lefts, outs


class _Walker:
    def __init__(self, input_sizes: tuple[int, ...]):
        self.input_sizes = input_sizes
        self.layers: list[LayerField] = []
        self.first_kernel_seen = False

    def walk(self, model, fields: dict, prefix: str = "") -> None:
        for layer in model.layers:
            if isinstance(layer, L.InputLayer):
                continue
            inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
            try:
                incoming = [fields[id(t)] for t in inputs]
            except KeyError:
                raise UnsupportedGeometryError(
                    f"layer {prefix + layer.name!r}: its input is not traceable from the model's input (a layer "
                    f"shared between several calls?); gradsight follows each layer's first call only") from None
            if isinstance(layer, keras.Model):
                inner = {id(layer.inputs[0]): incoming[0]}
                self.walk(layer, inner, prefix=f"{prefix}{layer.name}.")
                field, sizes = inner[id(layer.outputs[0])]
                geometry = None
            else:
                field, sizes, geometry = self.apply(layer, incoming, prefix)
            fields[id(layer.output)] = (field, sizes)
            channels = layer.output.shape[-1]
            shape = (channels, *sizes) if sizes else (channels,)
            self.layers.append(LayerField(prefix + layer.name, type(layer).__name__, tuple(shape), field,
                                          self.input_sizes, geometry))

    def apply(self, layer, incoming, prefix):
        field, sizes = incoming[0]
        n = len(sizes)
        if isinstance(layer, _CONVS + _POOLS):
            if isinstance(layer, _CONVS):
                kernel = _tuple(layer.kernel_size, n)
                stride = _tuple(layer.strides, n)
                dilation = _tuple(layer.dilation_rate, n)
            else:
                kernel = _tuple(layer.pool_size, n)
                stride = _tuple(layer.strides if layer.strides is not None else layer.pool_size, n)
                dilation = (1,) * n
            reach = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
            if not self.first_kernel_seen and any(r > 1 for r in reach):
                self.first_kernel_seen = True
                if any(s < r for s, r in zip(self.input_sizes, reach)):
                    raise BadInputError("input size", expected=f"at least {' x '.join(map(str, reach))} pixels, "
                                        f"the extent of the first kernel (layer {prefix + layer.name!r})",
                                        got=" x ".join(map(str, self.input_sizes)), fix="pass a larger input size")
            lefts, outs = _window(layer, sizes, kernel, stride, dilation, layer.padding)
            geometry = LayerGeometry(kernel, stride, tuple(lefts), dilation)
            return field.then(kernel, stride, lefts, dilation).within(outs), tuple(outs), geometry
        if isinstance(layer, (L.ZeroPadding1D, L.ZeroPadding2D, L.Cropping1D, L.Cropping2D)):
            pads = layer.padding if isinstance(layer, (L.ZeroPadding1D, L.ZeroPadding2D)) else layer.cropping
            pads = [pads] if n == 1 else list(pads)
            sign = 1 if isinstance(layer, (L.ZeroPadding1D, L.ZeroPadding2D)) else -1
            lefts = [sign * p[0] for p in pads]
            outs = [s + sign * (p[0] + p[1]) for s, p in zip(sizes, pads)]
            geometry = LayerGeometry((1,) * n, (1,) * n, tuple(lefts), (1,) * n)
            return field.then((1,) * n, (1,) * n, lefts, (1,) * n).within(outs), tuple(outs), geometry
        if isinstance(layer, _GLOBAL):
            return Field.everything(field.misaligned), (), None
        if isinstance(layer, _MERGES):
            if isinstance(layer, L.Concatenate) and layer.axis not in (-1, len(sizes) + 1):
                raise UnsupportedGeometryError(f"layer {prefix + layer.name!r}: concatenation along a spatial axis")
            merged = field
            for other, other_sizes in incoming[1:]:
                if other.is_global or not other_sizes:
                    merged = Field.everything(merged.misaligned or other.misaligned)
                else:
                    merged = merged.merge(other, where=prefix + layer.name)
            spatial = max((s for _, s in incoming), key=len)
            return merged, spatial, None
        if isinstance(layer, _PER_POSITION) or (isinstance(layer, L.Dense) and (field.is_global or n == 0)):
            return field, sizes, None
        if isinstance(layer, L.Dense):  # a Dense on a feature map acts on each position's channels
            return field, sizes, None
        if isinstance(layer, L.Reshape) and (field.is_global or not sizes):
            return Field.everything(field.misaligned), (), None
        raise UnsupportedGeometryError(
            f"receptive field of layer {prefix + layer.name!r}: expected layers with a known effect on the pixel "
            f"grid, got {type(layer).__name__}. Replace it, or measure the field from gradients instead "
            f"(gradsight rf --measure).")


def trace_fields(model, input_shape: tuple[int, ...], name: str | None = None) -> FieldReport:
    """Receptive fields of every layer of a Keras ``model`` for an input of (channels, rows[, cols])."""
    require_graph(model)
    sizes = tuple(int(n) for n in input_shape[1:])
    declared = model.inputs[0].shape[1:-1]
    if any(d is not None and d != s for d, s in zip(declared, sizes)):
        raise BadInputError("input size", expected=f"{tuple(declared)} (the model's Input)", got=str(sizes),
                            fix="rebuild the model with keras.Input(shape=(None, None, channels)) for other sizes")
    walker = _Walker(sizes)
    fields = {id(model.inputs[0]): (Field.identity(len(sizes)), sizes)}
    walker.walk(model, fields)
    return FieldReport(name or model.name, sizes, tuple(walker.layers))

