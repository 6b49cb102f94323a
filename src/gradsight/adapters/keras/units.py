"""Gradients of single units of a Keras layer with respect to the input, and their support maps.

Example:
    >>> grads, values = unit_gradients(model, "L6", np.array([[0, 0, 0], [3, 5, 7]]), x)   # doctest: +SKIP
    >>> grads.shape, values.shape             # d z[row, col, channel] / d input, one per unit  # doctest: +SKIP
    ((2, 128, 128, 1), (2,))
    >>> support_map(model, "L5", (3, 4), xs, seed=11).shape                                # doctest: +SKIP
    (128, 128)

Units are (row, col, channel) of the layer's channels-last output. A unit is computed on the partial model (the
model cut at the layer, built once per layer); with a ``CropPlan`` only the unit's input window is run.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ...errors import BadInputError
from ..common import support_weights
from .caches import model_cache, revalidate
from .layers import require_graph, resolve_layer


def partial_model(model: keras.Model, name: str) -> keras.Model:
    """``keras.Model(model.inputs, layer.output)`` for the layer ``name``, built once per model and layer."""
    partials = model_cache(model, "partial models")  # they hold the model's layers, not the model
    if name not in partials:
        require_graph(model)
        partials[name] = keras.Model(model.inputs, model.get_layer(name).output)
    return partials[name]


def _feature_map(z, name: str) -> None:
    if len(z.shape) != 4:
        raise BadInputError(f"layer {name!r}", expected="a feature map (N, rows, cols, channels)",
                            got=f"output of shape {tuple(z.shape)}", fix="pick a convolutional layer")


def _unit_pass(model, name: str, partial, windowed: bool, fast: bool):
    """``run(x, index)`` -> (the units' values, d sum(values) / d x); ``fast``: a ``tf.function`` compiled once
    per model, layer and kind of input (whole inputs, or windows of any size: shapes are left open)."""
    key = (name, windowed)
    compiled = model_cache(model, "compiled unit passes") if fast else {}
    if key in compiled:
        return compiled[key]

    def run(x, index):
        with tf.GradientTape() as tape:
            tape.watch(x)
            # .call runs the layers without the partial model's input-size check, so windows fit
            z = partial.call(x, training=False) if windowed else partial(x, training=False)
            picked = tf.gather_nd(z, index)
            total = tf.reduce_sum(picked)
        return picked, tape.gradient(total, x)

    if not fast:
        return run
    compiled[key] = tf.function(run, reduce_retracing=True)
    return compiled[key]


def unit_gradients(model: keras.Model, layer, units: np.ndarray, inputs: np.ndarray, plans=None,
                   batch_size: int = 32, fast: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """d z[unit] / d input for units (U, 3) of one input (H, W, C): gradients (U, H, W, C), values (U,).

    ``plans``: None, or one ``CropPlan`` per unit; with a plan only the plan's input window is run (no deeper
    cuts) and the gradient is pasted into a zero array of the input's size. Units of one batch must share a
    window size (``receptive.node_gradient`` groups them so). ``fast``: the pass runs as a ``tf.function``
    compiled once per model and layer (equal to the eager pass to rounding); ``fast=False`` runs eagerly.
    """
    revalidate(model)
    name, _ = resolve_layer(model, layer)
    partial = partial_model(model, name)
    _feature_map(partial.outputs[0], name)
    plans = list(plans) if plans is not None else [None] * len(units)
    grads = np.zeros((len(units), *inputs.shape), dtype=np.float32)
    values = np.zeros(len(units))
    array = np.asarray(inputs, dtype=np.float32)
    windows = [None if p is None else tuple(slice(a, b) for a, b in p.input_window) for p in plans]
    whole = tuple(slice(0, n) for n in array.shape[:-1])
    for start in range(0, len(units), batch_size):
        rows = range(start, min(start + batch_size, len(units)))
        x = tf.convert_to_tensor(np.stack([array[windows[i] or whole] for i in rows]))
        local = np.array([units[i] for i in rows])
        for i, row in enumerate(rows):
            if plans[row] is not None:
                local[i, :2] -= plans[row].unit_offset()
        index = np.stack([np.arange(len(local)), local[:, 0], local[:, 1], local[:, 2]], axis=1)
        run = _unit_pass(model, name, partial, windows[start] is not None, fast)
        picked, block = run(x, tf.constant(index, dtype=tf.int64))
        block = np.asarray(block)
        for i, row in enumerate(rows):
            grads[(row, *(windows[row] or whole))] = block[i]
        values[start:start + len(local)] = np.asarray(picked)
    return grads, values


def support_map(model: keras.Model, layer, position: tuple[int, int], inputs: np.ndarray, seed: int = 0) -> np.ndarray:
    """(H, W): sum over inputs (K, H, W, C) and channels of |d (sum_c w_c z[c, position]) / d input|, with the
    positive channel weights w_c of ``common.support_weights`` (the same in every framework for one seed)."""
    revalidate(model)
    name, _ = resolve_layer(model, layer)
    partial = partial_model(model, name)
    x = tf.convert_to_tensor(np.asarray(inputs, dtype=np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = partial(x, training=False)
        _feature_map(z, name)
        weights = support_weights(z.shape[-1], seed)
        total = tf.reduce_sum(z[:, position[0], position[1], :] * weights)
    return np.abs(np.asarray(tape.gradient(total, x))).sum(axis=(0, 3))
