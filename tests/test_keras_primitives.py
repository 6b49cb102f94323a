"""Keras primitives of the attribution family, checked against oracles written here as visible arithmetic:
hand-written forward passes under tf.GradientTape, closed forms of guided backprop and deconvnet on
f(x) = v . relu(W x), hand-computed ReLU6 / LeakyReLU numbers, the layers' own initializers, and Captum."""

from __future__ import annotations

import os
import re

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from gradsight.adapters.keras import modifiers as keras_modifiers  # noqa: E402
from gradsight.adapters.keras.gradients import layer_gradient, predict  # noqa: E402
from gradsight.adapters.keras.modifiers import modified_copy  # noqa: E402
from gradsight.errors import BadInputError, UnknownNameError  # noqa: E402

L = keras.layers


def randomise(model, seed=0, scale=0.5):
    """Weights as if trained: every value drawn, BatchNorm variances positive (so nothing is at its default)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(w.shape)
        value = rng.uniform(0.5, 2.0, shape) if "moving_variance" in w.path else rng.normal(0, scale, shape)
        w.assign(value.astype(np.float32))
    return model


def residual_cnn(ending=None, seed=0):
    """x -> c1 = relu(conv x) [= A] -> bn -> c2 = conv -> relu(A + c2) -> mean -> dense (-> ending)."""
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
    b = L.BatchNormalization(name="bn")(a)
    b = L.Conv2D(4, 3, padding="same", name="c2")(b)
    x = L.ReLU(name="r")(L.Add(name="add")([a, b]))
    x = L.GlobalAveragePooling2D(name="pool")(x)
    if ending == "dense_softmax":
        out = L.Dense(3, activation="softmax", name="dense")(x)
    else:
        out = L.Dense(3, name="dense")(x)
        if ending == "activation_softmax":
            out = L.Activation("softmax", name="sm")(out)
        elif ending == "hidden_softmax":  # softmax(2 z): no softmax layer whose input is the logits
            out = L.Lambda(lambda t: keras.ops.softmax(2.0 * t), name="probs")(out)
        elif ending == "lambda_softmax":
            out = L.Lambda(lambda t: keras.ops.softmax(t), name="probs")(out)
        elif ending == "ops_softmax":
            out = keras.ops.softmax(out)
    return randomise(keras.Model(inputs, out), seed)


def hand_forward(model, x):
    """The residual CNN written out: returns (A, rest) with logits = rest(A), so a tape can watch A."""
    c1, bn, c2, dense = (model.get_layer(n) for n in ("c1", "bn", "c2", "dense"))
    A = tf.nn.relu(tf.nn.conv2d(x, c1.kernel, 1, "SAME") + c1.bias)

    def rest(A):
        b = (A - bn.moving_mean) / tf.sqrt(bn.moving_variance + bn.epsilon) * bn.gamma + bn.beta
        b = tf.nn.conv2d(b, c2.kernel, 1, "SAME") + c2.bias
        pooled = tf.reduce_mean(tf.nn.relu(A + b), axis=(1, 2))
        return tf.matmul(pooled, dense.kernel) + dense.bias

    return A, rest


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(3).normal(0, 1, (5, 8, 8, 3)).astype(np.float32)


# --- predict ---------------------------------------------------------------------------------------------


def test_predict_equals_the_model_in_chunks(batch):
    model = residual_cnn()
    expected = np.asarray(model(batch, training=False))
    for size in (1, 2, 64):
        ours = predict(model, batch, batch_size=size)
        assert ours.dtype == np.float32 and ours.shape == (5, 3)
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ending", ["dense_softmax", "activation_softmax"])
def test_predict_steps_over_a_final_softmax(batch, ending):
    model = residual_cnn(ending)
    A, rest = hand_forward(model, tf.constant(batch))
    logits = rest(A).numpy()
    ours = predict(model, batch, batch_size=2)
    np.testing.assert_allclose(ours, logits, rtol=1e-5, atol=1e-5)
    probabilities = np.exp(ours) / np.exp(ours).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, np.asarray(model(batch, training=False)), rtol=1e-5, atol=1e-6)


ENDINGS = [None, "dense_softmax", "activation_softmax", "lambda_softmax", "ops_softmax", "hidden_softmax"]


@pytest.mark.parametrize("ending", ENDINGS)
def test_scores_are_read_as_score_gradient_reads_them(batch, ending):
    from gradsight.adapters.keras.adapter import KerasAdapter

    model = residual_cnn(ending)
    reference = KerasAdapter().score_gradient(model, batch, [None] * 5, score="prob", fast=False)
    np.testing.assert_allclose(predict(model, batch, batch_size=2), reference.logits, rtol=1e-5, atol=1e-6)
    ours = layer_gradient(model, "c1", batch, [None] * 5, score="prob")
    np.testing.assert_allclose(ours.logits, reference.logits, rtol=1e-5, atol=1e-6)
    assert ours.targets.tolist() == reference.targets.tolist()
    if ending != "hidden_softmax":  # the logits are the dense layer's output, written out
        A, rest = hand_forward(model, tf.constant(batch))
        np.testing.assert_allclose(ours.logits, rest(A).numpy(), rtol=1e-5, atol=1e-5)


def test_predict_of_probabilities_without_a_softmax_layer_gives_log_probabilities(batch):
    model = residual_cnn("hidden_softmax")
    probabilities = np.asarray(model(batch, training=False))
    np.testing.assert_allclose(predict(model, batch), np.log(probabilities), rtol=1e-5, atol=1e-6)


def test_predict_refuses_bad_batches(batch):
    model = residual_cnn()
    with pytest.raises(BadInputError, match="batch_size"):
        predict(model, batch, batch_size=0)
    with pytest.raises(BadInputError, match=r"\(N, 8, 8, 3\)"):
        predict(model, batch[..., :1])


# --- layer_gradient --------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["logit", "prob", "logprob"])
def test_layer_gradient_equals_a_hand_written_tape(batch, score):
    model = residual_cnn()
    targets = [None, 2, 0, None, 1]
    ours = layer_gradient(model, "c1", batch, targets, score=score)
    A, rest = hand_forward(model, tf.constant(batch))
    with tf.GradientTape() as tape:
        tape.watch(A)
        logits = rest(A)
        chosen = [int(np.argmax(logits[i])) if t is None else t for i, t in enumerate(targets)]
        scores = {"logit": logits, "prob": tf.nn.softmax(logits), "logprob": tf.nn.log_softmax(logits)}[score]
        total = tf.reduce_sum(tf.gather(scores, chosen, axis=1, batch_dims=1))
    expected = tape.gradient(total, A).numpy()
    assert ours.targets.tolist() == chosen
    np.testing.assert_allclose(ours.activations, A.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.logits, logits.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.gradient, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert np.abs(expected).max() > 0


def test_layer_gradient_of_a_frozen_model(batch):
    model = residual_cnn()
    expected = layer_gradient(model, "c1", batch, [1] * 5).gradient
    frozen = residual_cnn()
    frozen.trainable = False  # no variable is watched by the tape unless the input is
    np.testing.assert_allclose(layer_gradient(frozen, "c1", batch, [1] * 5).gradient, expected, rtol=1e-6,
                               atol=1e-9)
    assert np.abs(expected).max() > 0


@pytest.mark.parametrize("ending", ["dense_softmax", "activation_softmax"])
def test_layer_gradient_steps_over_a_final_softmax(batch, ending):
    plain, ended = residual_cnn(), residual_cnn(ending)
    for score in ("logit", "prob"):
        a = layer_gradient(plain, "bn", batch, [1] * 5, score=score)
        b = layer_gradient(ended, "bn", batch, [1] * 5, score=score)
        np.testing.assert_allclose(b.gradient, a.gradient, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b.logits, predict(ended, batch), rtol=1e-5, atol=1e-6)


def test_layer_gradient_of_probabilities_without_a_softmax_layer(batch):
    model = residual_cnn("hidden_softmax")
    with pytest.raises(BadInputError, match="probabilities"):
        layer_gradient(model, "c1", batch, [0] * 5, score="logit")
    ours = layer_gradient(model, "c1", batch, [0] * 5, score="prob")
    A, rest = hand_forward(model, tf.constant(batch))
    with tf.GradientTape() as tape:
        tape.watch(A)
        p = tf.nn.softmax(2.0 * rest(A))  # the model's output, written out
        total = tf.reduce_sum(p[:, 0])
    np.testing.assert_allclose(ours.gradient, tape.gradient(total, A).numpy(), rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(ours.logits, np.log(p.numpy()), rtol=1e-5, atol=1e-6)


def test_layer_gradient_refuses_what_it_cannot_do(batch):
    model = residual_cnn()
    with pytest.raises(BadInputError, match="spatial feature map"):
        layer_gradient(model, "pool", batch, [0] * 5)
    with pytest.raises(UnknownNameError, match="c2"):
        layer_gradient(model, "c3", batch, [0] * 5)
    with pytest.raises(BadInputError, match="0..2"):
        layer_gradient(model, "c1", batch, [3] * 5)
    with pytest.raises(BadInputError, match="one per input"):
        layer_gradient(model, "c1", batch, [0])
    inputs = keras.Input((8, 8, 3))
    shared = L.Conv2D(3, 3, padding="same", name="shared")
    out = L.Dense(2)(L.GlobalAveragePooling2D()(shared(shared(inputs))))
    with pytest.raises(BadInputError, match="called 2 times"):
        layer_gradient(keras.Model(inputs, out), "shared", batch, [0] * 5)


# --- guided backprop and deconvnet: closed forms on f(x) = v . relu(W x) ----------------------------------

N_IN, N_HID = 6, 5
V = np.array([1.5, -2.0, 0.5, -0.25, 3.0], np.float32)


def one_hidden(variant):
    """f(x) = v . relu(W x) built in several Keras ways; returns (model, W (hidden x in), reshape for x)."""
    rng = np.random.default_rng(11)
    K = rng.normal(0, 1, (N_IN, N_HID)).astype(np.float32)  # Keras kernels are (in, out): W = K^T
    dense = dict(use_bias=False, name="hidden")
    flat = (N_IN,)
    if variant == "sequential":
        model = keras.Sequential([keras.Input(flat), L.Dense(N_HID, activation="relu", **dense),
                                  L.Dense(1, use_bias=False, name="out")])
    elif variant == "conv1x1":
        inputs = keras.Input((1, 1, N_IN))
        h = L.Flatten()(L.Conv2D(N_HID, 1, activation="relu", **dense)(inputs))
        model = keras.Model(inputs, L.Dense(1, use_bias=False, name="out")(h))
        K = K.reshape(1, 1, N_IN, N_HID)
        flat = (1, 1, N_IN)
    else:
        inputs = keras.Input(flat)
        if variant == "dense_activation":
            h = L.Dense(N_HID, activation="relu", **dense)(inputs)
        elif variant == "relu_layer":
            h = L.ReLU()(L.Dense(N_HID, **dense)(inputs))
        elif variant == "activation_layer":
            h = L.Activation("relu")(L.Dense(N_HID, **dense)(inputs))
        elif variant == "nested":
            block = keras.Sequential([keras.Input(flat), L.Dense(N_HID, **dense), L.ReLU(name="act")],
                                     name="block")
            h = block(inputs)
        model = keras.Model(inputs, L.Dense(1, use_bias=False, name="out")(h))
    hidden = model.get_layer("block").get_layer("hidden") if variant == "nested" else model.get_layer("hidden")
    hidden.kernel.assign(K)
    model.get_layer("out").kernel.assign(V[:, None])
    return model, K.reshape(N_IN, N_HID).T, flat


def input_gradient(model, x):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        total = tf.reduce_sum(model(xt, training=False))
    return tape.gradient(total, xt).numpy()


VARIANTS = ["dense_activation", "relu_layer", "activation_layer", "conv1x1", "sequential", "nested"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_guided_and_deconvnet_equal_their_closed_forms(variant):
    model, W, shape = one_hidden(variant)
    x = np.random.default_rng(2).normal(0, 1, (4, N_IN)).astype(np.float32)
    before = [w.copy() for w in model.get_weights()]
    z = x @ W.T  # (batch, hidden): W x per row
    assert (z > 0).any() and (z < 0).any()
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    expected = {
        "plain": ((z > 0) * V) @ W,            # W^T (1[Wx > 0] * v)
        "guided": ((z > 0) * relu(V)) @ W,     # W^T (1[Wx > 0] * relu(v))
        "deconvnet": np.tile(relu(V) @ W, (len(x), 1)),   # W^T relu(v), whatever x
    }
    xs = x.reshape(len(x), *shape)
    np.testing.assert_allclose(input_gradient(model, xs).reshape(len(x), -1), expected["plain"], rtol=1e-5,
                               atol=1e-6)
    for rule in ("guided", "deconvnet"):
        copy = modified_copy(model, rule, probe=xs)
        np.testing.assert_array_equal(np.asarray(copy(xs)), np.asarray(model(xs)))  # forward unchanged
        np.testing.assert_allclose(input_gradient(copy, xs).reshape(len(x), -1), expected[rule], rtol=1e-5,
                                   atol=1e-6)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_allclose(input_gradient(model, xs).reshape(len(x), -1), expected["plain"], rtol=1e-5,
                               atol=1e-6)


def test_one_relu_layer_called_twice_follows_the_rule_at_each_call():
    """f(x) = v . relu(W2 relu(W1 x)) with ONE ReLU layer object applied twice (as torchvision's BasicBlock)."""
    rng = np.random.default_rng(8)
    K1, K2 = rng.normal(0, 1, (N_IN, N_HID)).astype(np.float32), rng.normal(0, 1, (N_HID, N_HID)).astype(np.float32)
    inputs, relu = keras.Input((N_IN,)), L.ReLU(name="shared_relu")
    h = relu(L.Dense(N_HID, use_bias=False, name="d1")(inputs))
    h = relu(L.Dense(N_HID, use_bias=False, name="d2")(h))
    model = keras.Model(inputs, L.Dense(1, use_bias=False, name="out")(h))
    for name, kernel in (("d1", K1), ("d2", K2), ("out", V[:, None])):
        model.get_layer(name).kernel.assign(kernel)
    x = rng.normal(0, 1, (6, N_IN)).astype(np.float32)
    z1 = x @ K1
    z2 = np.maximum(z1, 0) @ K2
    relu_ = lambda t: np.maximum(t, 0)  # noqa: E731
    g2 = (z2 > 0) * relu_(V)                        # guided at the second call
    guided = ((z1 > 0) * relu_(g2 @ K2.T)) @ K1.T   # ... and at the first, on W2^T g2
    deconv = relu_(relu_(V) @ K2.T) @ K1.T          # deconvnet: relu of the gradient at both calls
    np.testing.assert_allclose(input_gradient(modified_copy(model, "guided"), x), guided, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(input_gradient(modified_copy(model, "deconvnet"), x),
                               np.tile(deconv, (len(x), 1)), rtol=1e-5, atol=1e-6)


def elementwise(activation):
    """f(x) = v . act(x) for x of length 4, with v = (2, 3, 5, -1) or as given: d f / dx = act'(x) * v."""
    inputs = keras.Input((4,))
    out = L.Dense(1, use_bias=False, name="v")(activation(inputs))
    return keras.Model(inputs, out)


# Hand-computed, x and v chosen so that every case of each rule occurs; g = v is the upstream gradient.
CASES = {
    # ReLU6, x = (-1, 2, 7, 4), v = (2, 3, 5, -1): act' = 1[0 < x < 6] = (0, 1, 0, 1)
    "relu6_layer": (lambda: L.ReLU(max_value=6.0), [-1, 2, 7, 4], [2, 3, 5, -1],
                    {"plain": [0, 3, 0, -1], "guided": [0, 3, 0, 0], "deconvnet": [2, 3, 5, 0]}),
    "relu6_activation": (lambda: L.Activation("relu6"), [-1, 2, 7, 4], [2, 3, 5, -1],
                         {"plain": [0, 3, 0, -1], "guided": [0, 3, 0, 0], "deconvnet": [2, 3, 5, 0]}),
    # LeakyReLU(0.3), x = (-1, 2, -3, 4), v = (2, 3, -5, -1): act' = (0.3, 1, 0.3, 1)
    "leaky_layer": (lambda: L.LeakyReLU(negative_slope=0.3), [-1, 2, -3, 4], [2, 3, -5, -1],
                    {"plain": [0.3 * 2, 3, 0.3 * -5, -1], "guided": [0.3 * 2, 3, 0, 0],
                     "deconvnet": [2, 3, 0.3 * -5, 0.3 * -1]}),
    # Activation("leaky_relu"): Keras' default slope 0.2
    "leaky_activation": (lambda: L.Activation("leaky_relu"), [-1, 2, -3, 4], [2, 3, -5, -1],
                         {"plain": [0.2 * 2, 3, 0.2 * -5, -1], "guided": [0.2 * 2, 3, 0, 0],
                          "deconvnet": [2, 3, 0.2 * -5, 0.2 * -1]}),
    # ReLU(negative_slope=0.1, threshold=1, max_value=5), x = (0.5, 2, 6, -1): act' = (0.1, 1, 0, 0.1)
    "relu_threshold": (lambda: L.ReLU(negative_slope=0.1, threshold=1.0, max_value=5.0), [0.5, 2, 6, -1],
                       [2, 3, 4, -1], {"plain": [0.1 * 2, 3, 0, 0.1 * -1], "guided": [0.1 * 2, 3, 0, 0],
                                       "deconvnet": [2, 3, 4, 0.1 * -1]}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_relu6_and_leaky_rules_on_hand_computed_numbers(case):
    make, x, v, expected = CASES[case]
    model = elementwise(make())
    model.get_layer("v").kernel.assign(np.array(v, np.float32)[:, None])
    x = np.array([x], np.float32)
    np.testing.assert_allclose(input_gradient(model, x)[0], expected["plain"], rtol=1e-6, atol=1e-7)
    for rule in ("guided", "deconvnet"):
        copy = modified_copy(model, rule)
        np.testing.assert_allclose(input_gradient(copy, x)[0], expected[rule], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(copy(x)), np.asarray(model(x)))


def test_thresholded_relu_forward_is_kept():
    model = elementwise(L.ReLU(negative_slope=0.1, threshold=1.0, max_value=5.0))
    model.get_layer("v").kernel.assign(np.ones((4, 1), np.float32))
    probe = keras.Model(model.inputs[0], model.layers[1].output)
    x = np.array([[0.5, 2, 6, -1]], np.float32)
    # 0.1 (x - 1) below the threshold, x up to 5, then 5
    np.testing.assert_allclose(np.asarray(probe(x))[0], [0.1 * (0.5 - 1), 2, 5, 0.1 * (-1 - 1)], rtol=1e-6)
    copy = modified_copy(model, "guided")
    copy_probe = keras.Model(copy.inputs[0], copy.layers[1].output)
    np.testing.assert_array_equal(np.asarray(copy_probe(x)), np.asarray(probe(x)))


def conv_net(activation, name="conv_a", extra=None):
    inputs = keras.Input((4, 4, 3))
    x = L.Conv2D(2, 1, activation=activation, name=name)(inputs)
    if extra is not None:
        x = extra(x)
    x = L.Conv2D(2, 1, activation="relu", name="conv_b")(x)
    return keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize("activation, shown", [("swish", "swish"), ("silu", "silu"), ("gelu", "gelu"),
                                               ("hard_swish", "hard_swish"), ("mish", "mish"), ("elu", "elu"),
                                               ("sigmoid", "sigmoid"), ("tanh", "tanh")])
def test_smooth_activations_are_refused_by_name(activation, shown):
    model = conv_net(activation)
    for rule in ("guided", "deconvnet"):
        with pytest.raises(BadInputError, match=rf"{shown}.*conv_a"):
            modified_copy(model, rule)


@pytest.mark.parametrize("layer, shown", [(L.ELU(name="e"), "ELU"), (L.Softmax(name="s"), "Softmax"),
                                          (L.Activation("tanh", name="t"), "tanh")])
def test_smooth_activation_layers_are_refused_by_name(layer, shown):
    with pytest.raises(BadInputError, match=shown):
        modified_copy(conv_net("relu", extra=layer), "guided")


def test_relus_hidden_in_layer_code_are_refused():
    class Rectify(L.Layer):
        def call(self, x):
            return tf.nn.relu(x)

    lam = conv_net("linear", extra=L.Lambda(lambda t: tf.nn.relu(t), name="lam"))
    with pytest.raises(BadInputError, match="ReLUs inside a Lambda.*lam"):
        modified_copy(lam, "guided")
    custom = conv_net("linear", extra=Rectify(name="rectify"))
    with pytest.raises(BadInputError, match="ReLUs inside a Lambda.*rectify"):
        modified_copy(custom, "deconvnet")
    ops = conv_net("linear", extra=lambda t: keras.ops.relu(t))
    with pytest.raises(BadInputError, match="keras.ops call: Relu"):
        modified_copy(ops, "guided")
    swish = conv_net("relu", extra=L.Lambda(lambda t: t * tf.sigmoid(t), name="swish_by_hand"))
    with pytest.raises(BadInputError, match="Sigmoid.*swish_by_hand"):
        modified_copy(swish, "guided")
    # ReLUs written as a maximum or clip at 0, or gated by a comparison with 0; gates at other values pass.
    for name, gate in [("maximum", lambda t: keras.ops.maximum(t, 0.0)),
                       ("clip", lambda t: keras.ops.clip(t, 0.0, 6.0)),
                       ("where", lambda t: keras.ops.where(t > 0, t, 0.0)),
                       ("product", lambda t: t * keras.ops.cast(t >= 0, "float32"))]:
        with pytest.raises(BadInputError, match=f"ReLUs inside a Lambda.*{name}"):
            modified_copy(conv_net("relu", extra=L.Lambda(gate, name=name)), "guided")
    for name, other in [("shift", lambda t: t + 1.0), ("floor", lambda t: keras.ops.maximum(t, 1.0))]:
        assert modified_copy(conv_net("relu", extra=L.Lambda(other, name=name)), "deconvnet") is not None


class _Branches(L.Layer):
    """``gate`` on one branch of a tf.cond, a shift on the other."""

    def __init__(self, gate, **kwargs):
        super().__init__(**kwargs)
        self.gate = gate

    def get_config(self):  # the function itself: copied in memory, never serialised
        return {**super().get_config(), "gate": self.gate}

    def call(self, x):
        return tf.cond(tf.reduce_sum(x) > 1.0, lambda: self.gate(x), lambda: x + 1.0)


class _Loop(L.Layer):
    """``step`` applied in the body of a tf.while_loop whose integer counter runs down to 0."""

    def __init__(self, step, **kwargs):
        super().__init__(**kwargs)
        self.step = step

    def get_config(self):
        return {**super().get_config(), "step": self.step}

    def call(self, x):
        return tf.while_loop(lambda i, y: i > 0, lambda i, y: (i - 1, self.step(y)), (tf.constant(2), x))[1]


@pytest.mark.parametrize("read", ["function graphs", "node definitions"])
def test_relus_in_nested_function_bodies_are_refused(read, monkeypatch):
    # Gates inside a tf.cond branch or a tf.while_loop body are functions of their own in the traced graph.
    # They are read from the functions' graphs, or from their node definitions when no graph is at hand.
    if read == "node definitions":
        monkeypatch.setattr(keras_modifiers, "_function_graphs", lambda graph: {})
    for layer in [_Branches(lambda t: tf.maximum(t, 0.0), name="cond_max"),
                  _Branches(lambda t: t * tf.cast(t > 0, t.dtype), name="cond_mask"),
                  _Branches(lambda t: t * tf.cast(tf.less(0.0, t), t.dtype), name="cond_zero_first"),
                  _Loop(lambda t: tf.clip_by_value(t, 0.0, 6.0), name="loop_clip")]:
        with pytest.raises(BadInputError, match=f"ReLUs inside a Lambda.* with 0 .*{layer.name}"):
            modified_copy(conv_net("relu", extra=layer), "guided")
    # Not gates: a maximum at another value, and the loop's integer comparison of its counter with 0.
    accepted = [_Branches(lambda t: tf.maximum(t, 1.0), name="cond_floor"),
                _Loop(lambda t: t * 0.5, name="loop_halve")]
    if read == "function graphs":  # a scalar compared with 0 is a predicate (seen only with shapes)
        accepted += [_Branches(lambda t: tf.cond(tf.reduce_sum(t) > 0.0, lambda: t, lambda: -t), name="inner"),
                     _Branches(lambda t: t * tf.cast(tf.reduce_max(t) > 0.0, t.dtype), name="scalar_gate")]
    for layer in accepted:
        assert modified_copy(conv_net("relu", extra=layer), "deconvnet") is not None


def test_a_scalar_compared_with_0_is_a_predicate_not_a_relu():
    class Signed(L.Layer):  # the branch taken depends on a scalar's sign: no unit is gated by its own value
        def call(self, x):
            return tf.cond(tf.reduce_mean(x) > 0.0, lambda: 2.0 * x, lambda: x)

    assert modified_copy(conv_net("relu", extra=Signed(name="signed")), "guided") is not None
    with pytest.raises(BadInputError, match="Less with 0 .*zero_first"):  # 0 < t: a gate with 0 on the left
        modified_copy(conv_net("relu", extra=L.Lambda(lambda t: t * tf.cast(tf.less(0.0, t), t.dtype),
                                                      name="zero_first")), "guided")


def test_a_model_without_relu_is_refused():
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(L.Conv2D(2, 3)(inputs))))
    for rule in ("guided", "deconvnet"):
        with pytest.raises(BadInputError, match=f"ReLU activations \\(the {rule} rule.*no ReLU"):
            modified_copy(model, rule)


def test_unbuilt_and_subclassed_models(batch):
    unbuilt = keras.Sequential([L.Conv2D(2, 3, activation="relu"), L.GlobalAveragePooling2D(), L.Dense(2)])
    for call in (lambda: predict(unbuilt, batch), lambda: layer_gradient(unbuilt, 0, batch, [0] * 5),
                 lambda: modified_copy(unbuilt, "guided"), lambda: modified_copy(unbuilt, "reinit", layers=[0])):
        with pytest.raises(BadInputError, match="unbuilt Sequential"):
            call()

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = L.Conv2D(2, 3, activation="relu"), L.GlobalAveragePooling2D()

        def call(self, x):
            return self.pool(self.conv(x))

    net = Net()
    np.testing.assert_allclose(predict(net, batch, batch_size=2), np.asarray(net(batch)), rtol=1e-6, atol=1e-6)
    with pytest.raises(BadInputError, match="subclassed model \\(Net\\)"):
        layer_gradient(net, 0, batch, [0] * 5)


def test_subclassed_models_are_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2, activation="relu")

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 3), np.float32))
    for rule in ("guided", "reinit", "linearised"):
        with pytest.raises(BadInputError, match="subclassed model \\(Net\\)"):
            modified_copy(net, rule, layers=[0] if rule == "reinit" else ())


@pytest.mark.parametrize("ending", ENDINGS[1:])
def test_final_softmax_is_kept_and_stepped_over(batch, ending):
    model = residual_cnn(ending)
    guided = modified_copy(model, "guided", probe=batch)
    np.testing.assert_array_equal(np.asarray(guided(batch)), np.asarray(model(batch)))
    np.testing.assert_allclose(predict(guided, batch), predict(model, batch), rtol=1e-6, atol=1e-6)
    assert model.get_layer("c1").activation is keras.activations.relu  # the user's layer is untouched


def test_sequential_ending_in_softmax():
    model = keras.Sequential([keras.Input((N_IN,)), L.Dense(N_HID, activation="relu", name="hidden"),
                              L.Dense(3, activation="softmax", name="out")])
    randomise(model)
    x = np.random.default_rng(6).normal(0, 1, (4, N_IN)).astype(np.float32)
    out = model.get_layer("out")
    logits = np.maximum(x @ np.asarray(model.get_layer("hidden").kernel) + np.asarray(model.get_layer("hidden").bias),
                        0) @ np.asarray(out.kernel) + np.asarray(out.bias)
    np.testing.assert_allclose(predict(model, x), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(predict(modified_copy(model, "deconvnet"), x), logits, rtol=1e-5, atol=1e-5)


def test_bad_rules_and_arguments_are_refused():
    model, _, _ = one_hidden("dense_activation")
    with pytest.raises(BadInputError, match="guided, deconvnet, linearised, reinit"):
        modified_copy(model, "smoothgrad")
    with pytest.raises(BadInputError, match="only with rule='reinit'"):
        modified_copy(model, "guided", layers=["hidden"])
    with pytest.raises(BadInputError, match="at least one layer"):
        modified_copy(model, "reinit")
    with pytest.raises(BadInputError, match="seed"):
        modified_copy(model, "reinit", layers=["hidden"], seed="0")


def test_linearised_copy_is_the_linear_closed_form():
    model, W, _ = one_hidden("relu_layer")
    x = np.random.default_rng(4).normal(0, 1, (3, N_IN)).astype(np.float32)
    copy = modified_copy(model, "linearised")
    np.testing.assert_allclose(np.asarray(copy(x))[:, 0], x @ W.T @ V, rtol=1e-5, atol=1e-6)  # v . (W x)

    # A Lambda keeps its live function (as torch's deepcopy keeps functional code): here a linear one, so the
    # copy is affine: f(a) + f(b) = f(a + b) + f(0), which the ReLUs of the model itself break.
    lam = conv_net("relu", extra=L.Lambda(lambda t: 2.0 * t - 1.0, name="lam"))
    a, b = (np.random.default_rng(s).normal(0, 1, (2, 4, 4, 3)).astype(np.float32) for s in (5, 6))
    for net, affine in ((modified_copy(lam, "linearised"), True), (lam, False)):
        fa, fb, fab, f0 = (np.asarray(net(v), np.float64) for v in (a, b, a + b, np.zeros_like(a)))
        gap = np.abs(fa + fb - fab - f0).max()
        assert (gap < 1e-4) == affine, gap


# --- reinit -----------------------------------------------------------------------------------------------


class UnseededNoise(keras.initializers.Initializer):
    def __call__(self, shape, dtype=None):
        return np.random.default_rng().normal(size=shape).astype(np.float32)


def reinit_net():
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(3, 3, name="c1", bias_initializer=keras.initializers.Constant(-0.5))(inputs)
    x = L.ReLU(name="re")(L.BatchNormalization(name="bn")(x))
    x = L.Conv2D(3, 3, name="c2")(x)
    block = keras.Sequential([keras.Input((2, 2, 3)), L.Conv2D(3, 1, name="inner", use_bias=False),
                              L.DepthwiseConv2D(1, name="depth")], name="block")
    x = L.GlobalAveragePooling2D()(block(x))
    out = L.Dense(2, name="dense", kernel_initializer=keras.initializers.RandomUniform(-0.01, 0.01),
                  bias_initializer=keras.initializers.Constant(0.25))(x)
    return randomise(keras.Model(inputs, out), seed=5, scale=3.0)


def weights_by_path(model):
    return {w.path: np.asarray(w).copy() for w in model.weights}


def test_reinit_redraws_exactly_the_named_layers_from_their_initializers():
    model = reinit_net()
    before = weights_by_path(model)
    copy = modified_copy(model, "reinit", layers=["c1", "bn", "dense"], seed=7)
    after = weights_by_path(copy)
    assert set(after) == set(before)
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed == {"c1/kernel", "c1/bias", "bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance",
                       "dense/kernel", "dense/bias"}
    # Glorot uniform: |w| <= sqrt(6 / (fan_in + fan_out)), fan_in = 3*3*2, fan_out = 3*3*3
    kernel = after["c1/kernel"]
    assert np.abs(kernel).max() <= np.sqrt(6 / (3 * 3 * 2 + 3 * 3 * 3)) and np.unique(kernel).size == kernel.size
    np.testing.assert_array_equal(after["c1/bias"], np.full(3, -0.5, np.float32))
    for name, value in (("gamma", 1), ("beta", 0), ("moving_mean", 0), ("moving_variance", 1)):
        np.testing.assert_array_equal(after[f"bn/{name}"], np.full(3, value, np.float32))
    assert np.abs(after["dense/kernel"]).max() <= 0.01
    np.testing.assert_array_equal(after["dense/bias"], np.full(2, 0.25, np.float32))
    assert all(np.array_equal(before[p], v) for p, v in weights_by_path(model).items())  # the user's model


def test_reinit_is_reproducible_by_seed_and_independent_of_order():
    model = reinit_net()
    a = weights_by_path(modified_copy(model, "reinit", layers=["c1", "bn", "dense"], seed=7))
    b = weights_by_path(modified_copy(model, "reinit", layers=["dense", model.get_layer("bn"), 0], seed=7))
    c = weights_by_path(modified_copy(model, "reinit", layers=["c1", "bn", "dense"], seed=8))
    assert all(np.array_equal(a[p], b[p]) for p in a)
    assert not np.array_equal(a["c1/kernel"], c["c1/kernel"])
    assert not np.array_equal(a["dense/kernel"], c["dense/kernel"])
    inputs = keras.Input((4,))
    twins = keras.Model(inputs, L.Dense(4, name="second")(L.Dense(4, name="first")(inputs)))
    drawn = weights_by_path(modified_copy(twins, "reinit", layers=["first", "second"], seed=7))
    assert not np.array_equal(drawn["first/kernel"], drawn["second/kernel"])  # one stream per layer


def test_reinit_reaches_into_nested_models_and_shares_nothing():
    model = reinit_net()
    before = weights_by_path(model)
    only_inner = weights_by_path(modified_copy(model, "reinit", layers=["block/inner"], seed=1))
    assert {p for p in before if not np.array_equal(before[p], only_inner[p])} == {"block/inner/kernel"}
    by_name = weights_by_path(modified_copy(model, "reinit", layers=["inner"], seed=1))
    assert all(np.array_equal(only_inner[p], by_name[p]) for p in by_name)
    copy = modified_copy(model, "reinit", layers=["block"], seed=1)
    changed = {p for p, v in weights_by_path(copy).items() if not np.array_equal(before[p], v)}
    assert changed == {"block/inner/kernel", "block/depth/kernel", "block/depth/bias"}
    copy.get_layer("c2").kernel.assign(np.zeros((3, 3, 3, 3), np.float32))
    np.testing.assert_array_equal(np.asarray(model.get_layer("c2").kernel), before["c2/kernel"])


def test_reinit_refuses_unknown_empty_and_unseeded_layers():
    model = reinit_net()
    with pytest.raises(UnknownNameError, match="c1"):
        modified_copy(model, "reinit", layers=["c3"])
    with pytest.raises(BadInputError, match="parameters"):
        modified_copy(model, "reinit", layers=["re"])
    inputs = keras.Input((3,))
    noisy = keras.Model(inputs, L.Dense(2, name="noisy", kernel_initializer=UnseededNoise())(inputs))
    with pytest.raises(BadInputError, match="UnseededNoise.*without a seed"):
        modified_copy(noisy, "reinit", layers=["noisy"])


# --- an independent implementation: Captum on the PyTorch seed CNN with the same weights -------------------


@pytest.mark.filterwarnings("ignore::UserWarning")  # Captum announces its hooks
def test_seed_cnn_guided_and_deconvnet_equal_captum():
    import torch
    from captum.attr import Deconvolution, GuidedBackprop

    from gradsight.adapters.keras.zoo import copy_seed_weights, keras_seed_cnn
    from gradsight.adapters.torch.zoo import seed_cnn

    net = seed_cnn("same")
    net.head.softmax = torch.nn.Identity()  # Captum explains what the net returns: make that the logits
    model = keras_seed_cnn()
    copy_seed_weights(net, model)
    x = np.random.default_rng(9).random((2, 128, 128, 1), dtype=np.float32)
    targets = [3, 7]
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    for rule, method in (("guided", GuidedBackprop), ("deconvnet", Deconvolution)):
        expected = method(net).attribute(xt, target=targets).permute(0, 2, 3, 1).detach().numpy()
        copy = modified_copy(model, rule)
        dense = copy.get_layer("dense")
        features = keras.Model(copy.inputs, dense.input)
        xk = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xk)
            logits = tf.matmul(features(xk, training=False), dense.kernel) + dense.bias
            total = tf.reduce_sum(tf.gather(logits, targets, axis=1, batch_dims=1))
        ours = tape.gradient(total, xk).numpy()
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_layers_keras_cannot_copy_are_refused_clearly():
    class Scaled(L.Layer):  # no get_config: Keras's automatic config cannot hold the function argument
        def __init__(self, scale_fn, **kwargs):
            super().__init__(**kwargs)
            self.scale_fn = scale_fn

        def call(self, x):
            return self.scale_fn(x)

    class Forgetful(L.Layer):  # a get_config without the required argument: from_config fails
        def __init__(self, factor, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            return {"name": self.name, "trainable": self.trainable}

    class Popping(Forgetful):  # a from_config that reads a key get_config never wrote: KeyError
        @classmethod
        def from_config(cls, config):
            return cls(config.pop("factor"), **config)

    class Typo(Forgetful):  # a get_config with a typo: AttributeError
        def get_config(self):
            return {"name": self.name, "factor": self.facter}

    class Doubling(L.Lambda):  # a Lambda subclass: rebuilt from config, whose function safe mode refuses
        def __init__(self, **kwargs):
            super().__init__(lambda t: 2.0 * t, **kwargs)

    cases = [(Scaled(lambda t: 2.0 * t, name="scaled"), "Scaled: Object Scaled was created by passing "
              "non-serializable argument values", "get_config"),
             (Forgetful(2.0, name="forgetful"), "Forgetful: .*missing 1 required positional argument: 'factor'",
              "get_config"),
             (Popping(2.0, name="popping"), "Popping: 'factor'", "get_config"),
             (Typo(2.0, name="typo"), "Typo: .*has no attribute 'facter'", "get_config"),
             (Doubling(name="doubling"), "Doubling: .*lambda", "keras.layers.Lambda itself")]
    for layer, got, fix in cases:
        for rule in ("guided", "linearised"):
            with pytest.raises(BadInputError, match=f"layer '{layer.name}'.*a layer Keras can copy") as err:
                modified_copy(conv_net("relu", extra=layer), rule)
            assert re.match(got, err.value.got), err.value.got
            assert fix in err.value.fix
