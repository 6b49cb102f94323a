"""Gradients of class scores for Keras models: with respect to the input, or to a layer's activations; and
forward-only scores.

Example:
    >>> g = score_gradient(model, x, [None] * len(x))    # d logit[predicted] / d x  # doctest: +SKIP
    >>> g.gradient.shape == x.shape, g.targets                                    # doctest: +SKIP
    (True, array([3, 1], dtype=int32))
    >>> predict(model, x, batch_size=16).argmax(axis=1)        # the same classes, forward only  # doctest: +SKIP
    >>> layer_gradient(model, "conv5_block3_out", x, [None, None]).activations.shape   # doctest: +SKIP

Keras works channels-last, which is gradsight's boundary layout, so arrays pass as they are. Models are called
with ``training=False`` (BatchNorm moving statistics, no dropout); nothing on the model changes. Scores are read
as ``scores.py`` says (a final softmax stepped over on evidence; probabilities never called logits).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from ...errors import BadInputError
from ..common import LayerGradient, ScoreGradient, resolve_targets
from .caches import model_cache, revalidate
from .layers import as_batch, graph_io, require_graph, resolve_layer, times_used
from .scores import (
    ForwardPass,
    check_score,
    check_scores,
    forward_pass,
    has_pass,
    logits_of,
    may_step,
    probabilities_refused,
    read_as,
    select,
)


def _gradient_pass(model, forward: ForwardPass, reading: str, score: str, fast: bool):
    """``run(x, targets)`` -> (output, scores, chosen targets, d score / d x), ``targets`` -1 = the predicted
    class; the score is read by ``reading`` (decided before the pass: the caller checks it after). ``fast``: a
    ``tf.function``, compiled once per model, reading and score (equal to the eager pass to rounding)."""
    key = (reading, score)
    compiled = model_cache(model, "compiled") if fast else {}  # holds the ForwardPass, not the model
    if key in compiled:
        return compiled[key]

    def run(x, targets):
        with tf.GradientTape() as tape:
            tape.watch(x)
            output, scores = forward(x)
            read = scores if reading == "step" else output
            # Clamped so that a class index too large for a model that declares no class count (subclassed)
            # cannot fail inside the graph; it is refused after the pass with the real count.
            last = tf.shape(read)[1] - 1
            chosen = tf.minimum(tf.where(targets < 0, tf.argmax(read, axis=1, output_type=tf.int32), targets), last)
            total = tf.reduce_sum(select(read, chosen, score, reading))
        return output, scores, chosen, tape.gradient(total, x)

    if not fast:
        return run
    compiled[key] = tf.function(run, reduce_retracing=True)
    return compiled[key]


def score_gradient(model: keras.Model, inputs: np.ndarray, targets: Sequence[int | None], score: str = "logit",
                   fast: bool = True) -> ScoreGradient:
    """Scores (N, K), chosen targets and d score[target] / d input (N, H, W, C), one forward and backward pass.

    Example:
        >>> score_gradient(model, x, [None, 3], score="logprob", fast=False).logits.shape   # doctest: +SKIP
        (2, 10)

    ``fast``: the pass runs as a ``tf.function`` compiled once per model and score; ``fast=False`` runs eagerly.
    """
    check_score(score)
    revalidate(model)
    targets = list(targets)
    array = as_batch(model, inputs)
    if len(targets) != len(array):
        raise BadInputError("targets", expected=f"one per input ({len(array)})", got=f"{len(targets)} targets")
    io = graph_io(model)
    if io is not None or isinstance(model, keras.Sequential):
        # subclassed models declare no class count: their targets are checked after the pass
        _, output = require_graph(model, "scores")
        resolve_targets(targets, output.shape[-1])  # range check before any work
    forward = forward_pass(model)
    x = tf.convert_to_tensor(array)
    wanted = tf.constant([-1 if t is None else int(t) for t in targets], dtype=tf.int32)
    last = model_cache(model, "reading")  # the reading of the model's last batch: the likely one
    guess = last.get("last", "step" if may_step(model, forward) else "logits")
    output, scores, chosen, grad = _gradient_pass(model, forward, guess, score, fast)(x, wanted)
    reading = read_as(model, forward, np.asarray(output), np.asarray(scores))
    if reading != guess:
        last["last"] = reading
        if not (reading == "probabilities" and score == "logit"):
            output, scores, chosen, grad = _gradient_pass(model, forward, reading, score, fast)(x, wanted)
    if reading == "probabilities" and score == "logit":
        raise probabilities_refused()
    logits = logits_of(reading, np.asarray(output), np.asarray(scores))
    check_scores(logits)
    resolve_targets(targets, logits.shape[1])
    return ScoreGradient(logits, np.asarray(chosen), np.asarray(grad))


def predict(model: keras.Model, inputs: np.ndarray, batch_size: int = 64, fast: bool = False) -> np.ndarray:
    """Pre-softmax class scores (N, K), float32, forward only, ``batch_size`` inputs at a time.

    Example:
        >>> predict(model, x, batch_size=16).argmax(axis=1)       # the predicted classes   # doctest: +SKIP

    A model whose output rows are probabilities with no softmax to step over gives log(probabilities), as
    ``score_gradient`` does: scores whose softmax is the model's output. ``fast``: the forward pass runs as a
    ``tf.function`` compiled once per model (equal to the eager pass to rounding); ``fast=False`` runs eagerly.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadInputError("batch_size", expected="a positive integer", got=repr(batch_size))
    revalidate(model)
    forward = run = forward_pass(model)
    if fast:
        compiled = model_cache(model, "compiled")  # holds the ForwardPass, not the model
        if "predict" not in compiled:
            compiled["predict"] = tf.function(forward.__call__, reduce_retracing=True)
        run = compiled["predict"]
    x = as_batch(model, inputs)
    outputs, scores = [], []
    for start in range(0, len(x), batch_size):
        output, score = run(tf.convert_to_tensor(x[start:start + batch_size]))
        outputs.append(np.asarray(output, np.float32))
        scores.append(np.asarray(score, np.float32))
    if not outputs:
        return np.zeros((0, model.outputs[0].shape[-1]), np.float32)
    output, scores = np.concatenate(outputs), np.concatenate(scores)
    result = logits_of(read_as(model, forward, output, scores), output, scores)
    check_scores(result)
    return result


def _layer_pass(model, name: str, layer) -> ForwardPass:
    """The pass that also gives ``layer``'s output; a layer whose activations are not one map is refused."""
    if has_pass(model, name):
        return forward_pass(model, name)
    output = layer.output
    shape = None if isinstance(output, (list, tuple, dict)) else tuple(output.shape)
    if shape is None or len(shape) != 4:
        got = "several outputs" if shape is None else f"output of shape {shape}"
        raise BadInputError(f"layer {name!r}", expected="a spatial feature map (N, rows, cols, channels)",
                            got=got, fix="pick a convolutional layer (see `gradsight rf MODEL`)")
    uses = times_used(model, name)
    if uses > 1:
        raise BadInputError(f"layer {name!r}", expected="a layer the model calls once",
                            got=f"a layer called {uses} times (its activations are ambiguous)",
                            fix="pick a layer applied once, e.g. the one after it")
    try:
        return forward_pass(model, name, layer)
    except ValueError as err:
        if isinstance(err, BadInputError):
            raise
        raise BadInputError(f"layer {name!r}", expected="a layer on the path from the model's input to its output",
                            got=str(err).splitlines()[0], fix="pick a layer listed by `gradsight rf MODEL`") from None


def _layer_gradient_pass(model, name: str, forward: ForwardPass, reading: str, score: str, fast: bool):
    """``run(x, targets)`` -> (activations, output, scores, chosen targets, d score / d activations), as
    ``_gradient_pass`` but differentiating with respect to layer ``name``'s output; compiled once per model,
    layer, reading and score when ``fast``."""
    key = ("layer", name, reading, score)
    compiled = model_cache(model, "compiled") if fast else {}  # holds the ForwardPass, not the model
    if key in compiled:
        return compiled[key]

    def run(x, targets):
        with tf.GradientTape() as tape:
            tape.watch(x)  # records the whole pass, also through frozen (non-trainable) weights
            activations, output, scores = forward(x)
            read = scores if reading == "step" else output
            last = tf.shape(read)[1] - 1  # clamped as in _gradient_pass; refused after the pass
            chosen = tf.minimum(tf.where(targets < 0, tf.argmax(read, axis=1, output_type=tf.int32), targets), last)
            total = tf.reduce_sum(select(read, chosen, score, reading))
        return activations, output, scores, chosen, tape.gradient(total, activations)

    if not fast:
        return run
    compiled[key] = tf.function(run, reduce_retracing=True)
    return compiled[key]


def layer_gradient(model: keras.Model, layer, inputs: np.ndarray, targets: Sequence[int | None],
                   score: str = "logit", fast: bool = False) -> LayerGradient:
    """Activations A of ``layer`` (N, h, w, c) and d score[target] / dA, one forward and one backward pass.

    Example:
        >>> g = layer_gradient(model, "conv5_block3_out", x, [None])          # doctest: +SKIP
        >>> cam = np.maximum((g.gradient.mean(axis=(1, 2), keepdims=True) * g.activations).sum(-1), 0)  # doctest: +SKIP

    ``layer``: a name, an index among the model's layers or the layer itself (as ``layers.resolve_layer``).
    ``logits`` are read as by ``predict``. ``fast``: the pass runs as a ``tf.function`` compiled once per
    model, layer and score (equal to the eager pass to rounding); ``fast=False`` runs eagerly.
    """
    check_score(score)
    require_graph(model, "layer gradients")
    revalidate(model)
    name, found = resolve_layer(model, layer)
    forward = _layer_pass(model, name, found)
    x = as_batch(model, inputs)
    targets = list(targets)
    if len(targets) != len(x):
        raise BadInputError("targets", expected=f"one per input ({len(x)})", got=f"{len(targets)} targets")
    classes = model.outputs[0].shape[-1]
    resolve_targets(targets, classes)  # range check before any work
    xt = tf.convert_to_tensor(x)
    wanted = tf.constant([-1 if t is None else int(t) for t in targets], dtype=tf.int32)
    last = model_cache(model, "reading")  # the reading of the model's last batch: the likely one
    guess = last.get("last", "step" if may_step(model, forward) else "logits")
    activations, output, scores, chosen, gradient = _layer_gradient_pass(model, name, forward, guess, score,
                                                                         fast)(xt, wanted)
    reading = read_as(model, forward, np.asarray(output), np.asarray(scores))
    if reading != guess:
        last["last"] = reading
        if not (reading == "probabilities" and score == "logit"):
            activations, output, scores, chosen, gradient = _layer_gradient_pass(
                model, name, forward, reading, score, fast)(xt, wanted)
    if reading == "probabilities" and score == "logit":
        raise probabilities_refused()
    logits = logits_of(reading, np.asarray(output), np.asarray(scores)).astype(np.float32)
    check_scores(logits)
    resolve_targets(targets, logits.shape[1])
    if gradient is None:
        raise BadInputError(f"layer {name!r}", expected="a layer the class scores depend on",
                            got="a layer the scores do not depend on", fix="pick a layer before the classifier")
    return LayerGradient(np.asarray(activations, np.float32), np.asarray(gradient, np.float32), logits,
                         np.asarray(chosen, dtype=np.int64))
