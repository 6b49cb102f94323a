"""Reading a Keras model's output as class scores: the logits behind a final softmax, or probabilities said to be.

Example:
    >>> forward = forward_pass(model)          # one pass: the output and what a final softmax reads  # doctest: +SKIP
    >>> output, scores = forward(x)                                                  # doctest: +SKIP
    >>> reading = read_as(model, forward, np.asarray(output), np.asarray(scores))    # doctest: +SKIP
    >>> logits = logits_of(reading, np.asarray(output), np.asarray(scores))          # doctest: +SKIP

A final softmax is stepped over when the model's output comes from one operation that may be a softmax (a Dense
with a softmax activation, or any operation reading one tensor shaped like the output: a Softmax or Activation
layer, ``keras.ops.softmax``, a Lambda) and the data show output == softmax(what it reads): evidence, not a
guess from names. One batch where it does not hold proves the operation is no softmax, and the model's output is
read as it is from then on. Output rows that are probabilities with no softmax to step over are never called
logits: 'logit' is refused, 'prob'/'logprob' differentiate the output / its log, and the logits reported are
log(probabilities), whose softmax gives the model's probabilities back. Every pass uses these functions:
``score_gradient``, ``predict`` and ``layer_gradient`` read a model the same way. Passes are cached per model
(``caches.py``); a subclassed model's pass calls it through a weak reference, so that the cache never keeps it
alive.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf

from ...errors import BadInputError
from ..common import rows_are_probabilities
from .caches import model_cache
from .layers import final_operation, graph_io, require_graph

SCORES = ("logit", "prob", "logprob")
TINY = np.finfo(np.float32).tiny  # the log of a probability that underflowed to 0 is log(TINY), not -inf


def check_score(score: str) -> None:
    if score not in SCORES:
        raise BadInputError("score", expected="'logit', 'prob' or 'logprob'", got=repr(score))


def is_softmax(activation) -> bool:
    """Whether an activation function is Keras' softmax."""
    return getattr(activation, "__name__", "") == "softmax"


def is_softmax_operation(op) -> bool:
    """A Softmax layer or a ``keras.ops.softmax`` call (over any axis)."""
    return isinstance(op, keras.layers.Softmax) or (
        type(op).__name__ == "Softmax" and type(op).__module__.startswith("keras."))


def named_softmax(op) -> bool:
    """A Softmax or Activation('softmax') layer, or ``keras.ops.softmax``, over the class axis."""
    if isinstance(op, keras.layers.Activation):
        return is_softmax(op.activation)
    return is_softmax_operation(op) and getattr(op, "axis", -1) in (-1, 1)


def dense_logits(dense, features):
    """A Dense layer's output before its activation."""
    z = tf.matmul(features, dense.kernel)
    return z + dense.bias if dense.use_bias else z


def is_softmax_of(scores: np.ndarray, output: np.ndarray) -> bool:
    """Whether ``output`` == softmax(``scores``) row by row, to float32 rounding."""
    z = np.asarray(scores, dtype=np.float64)
    if z.shape != np.shape(output) or not np.isfinite(z).all():
        return False
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return bool(np.allclose(e / e.sum(axis=1, keepdims=True), output, rtol=1e-4, atol=1e-6))


class _Weakly:
    """Calls a model through a weak reference, so that a cached pass does not keep its model alive."""

    def __init__(self, model):
        self.model = weakref.ref(model)

    def __call__(self, x, training=False):
        return self.model()(x, training=training)


class ForwardPass:
    """One forward pass giving [a layer's output,] the model's output and the scores a final softmax reads (the
    output again when there is nothing to step over). ``stepped``: whether those scores are a softmax's input."""

    def __init__(self, model, layer=None):
        if layer is None and isinstance(model, keras.Model) and not isinstance(model, keras.Sequential) \
                and graph_io(model) is None:  # subclassed: no graph to look into, its output as it is
            self.dense, self.stepped, self.graph = None, False, _Weakly(model)
            return
        _, output = require_graph(model, "layer gradients" if layer is not None else "scores")
        op, source = final_operation(model)
        dense = isinstance(op, keras.layers.Dense) and is_softmax(getattr(op, "activation", None))
        self.stepped = source is not None and len(output.shape) == 2 and (
            dense or tuple(source.shape) == tuple(output.shape))
        self.dense = op if self.stepped and dense else None
        wanted = ([layer.output] if layer is not None else []) + [output] + ([source] if self.stepped else [])
        self.graph = keras.Model(model.inputs, wanted)

    def __call__(self, x) -> list:
        out = self.graph(x, training=False)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        if self.stepped:
            out[-1] = dense_logits(self.dense, out[-1]) if self.dense is not None else out[-1]
        else:
            out.append(out[-1])
        return out


def forward_pass(model, name: str | None = None, layer=None) -> ForwardPass:
    """The model's ForwardPass (with layer ``name``'s output when given), built once per model and layer."""
    passes = model_cache(model, "passes")
    if name not in passes:
        passes[name] = ForwardPass(model, layer)
    return passes[name]


def has_pass(model, name: str | None = None) -> bool:
    return name in model_cache(model, "passes")


def may_step(model, forward: ForwardPass) -> bool:
    """Whether the model may end in a softmax to step over (its structure allows it, no batch refuted it)."""
    return forward.stepped and not model_cache(model, "reading").get("refuted", False)


def read_as(model, forward: ForwardPass, output: np.ndarray, scores: np.ndarray) -> str:
    """How to read one batch: 'step' (the scores are logits whose softmax is the output), 'probabilities' (the
    output's rows are probabilities, with no softmax to step over) or 'logits' (the output itself)."""
    if may_step(model, forward):
        if is_softmax_of(scores, output):
            return "step"
        model_cache(model, "reading")["refuted"] = True  # a softmax is one on every batch: this is not one
    return "probabilities" if rows_are_probabilities(output) else "logits"


def logits_of(reading: str, output: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The class scores reported for a reading: the softmax's input, log(probabilities), or the output."""
    if reading == "step":
        return np.asarray(scores)
    if reading == "probabilities":
        return np.log(np.maximum(np.asarray(output, dtype=np.float32), TINY))
    return np.asarray(output)


def select(scores, chosen, score: str, reading: str):
    """score[chosen] per row, as a tensor to differentiate. With reading 'probabilities', ``scores`` holds the
    model's probabilities ('prob' is them, 'logprob' their log); callers refuse 'logit' there
    (``probabilities_refused``)."""
    if reading == "probabilities":
        scores = tf.math.log(tf.maximum(scores, TINY)) if score == "logprob" else scores
    elif score == "prob":
        scores = tf.nn.softmax(scores, axis=1)
    elif score == "logprob":
        scores = tf.nn.log_softmax(scores, axis=1)
    return tf.gather(scores, chosen, axis=1, batch_dims=1)


def probabilities_refused() -> BadInputError:
    return BadInputError("model output", expected="class logits (pre-softmax scores)",
                         got="rows that sum to 1 (probabilities) and no softmax layer to step over, so 'logit' "
                             "would differentiate a probability",
                         fix="end the model in its logits, or pass score='prob' (or 'logprob')")


def check_scores(scores: np.ndarray) -> None:
    """Refuse class scores that are not finite or not (N, classes)."""
    if scores.ndim != 2 or not np.isfinite(scores).all():
        raise BadInputError("model output", expected="finite class scores of shape (N, classes)",
                            got=f"shape {scores.shape}" if scores.ndim != 2 else "NaN or infinity")


def logits_model(model):
    """The model's pre-softmax scores as a callable, from the structure alone: ``keras.Model(inputs, logits)``
    behind a final Softmax/Activation('softmax') layer or ``keras.ops.softmax``, a function for a Dense with a
    softmax activation, else the model itself. (The passes above also step over a Lambda or any other final
    operation once the data show that it computes a softmax.)"""
    op, source = final_operation(model)
    if op is None:
        return model
    if isinstance(op, keras.layers.Dense) and is_softmax(op.activation):
        features = keras.Model(model.inputs, source)
        return lambda x, training=False: dense_logits(op, features(x, training=training))
    if named_softmax(op):
        return keras.Model(model.inputs, source)
    return model
