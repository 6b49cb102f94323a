"""The adapter contract: every ModelAdapter method of BOTH frameworks, on the seed CNN with the same weights,
gives the same numbers. This is the guard that keeps the PyTorch and Keras adapters in line."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from gradsight.adapters.discovery import adapter_for  # noqa: E402
from gradsight.adapters.keras.models import copy_seed_weights, keras_seed_cnn  # noqa: E402
from gradsight.adapters.protocol import ModelAdapter  # noqa: E402
from gradsight.adapters.torch.zoo import seed_cnn  # noqa: E402

RTOL, ATOL = 1e-4, 1e-6  # float32 in two frameworks: the same arithmetic in different orders


@pytest.fixture(scope="module")
def pair():
    torch_net = seed_cnn("same", seed=3)
    keras_model = keras_seed_cnn(seed=3)
    copy_seed_weights(torch_net, keras_model)
    return (adapter_for(torch_net), torch_net), (adapter_for(keras_model), keras_model)


@pytest.fixture(scope="module")
def inputs():
    # Positive and negative values so that some ReLUs are off, as on real data.
    return np.random.default_rng(7).normal(0.3, 1.0, size=(3, 128, 128, 1)).astype(np.float32)


def both(pair, call):
    (ta, tm), (ka, km) = pair
    return call(ta, tm), call(ka, km)


def test_both_adapters_implement_the_protocol(pair):
    (ta, _), (ka, _) = pair
    assert isinstance(ta, ModelAdapter) and isinstance(ka, ModelAdapter)
    assert (ta.name, ka.name) == ("torch", "keras")


def test_predict(pair, inputs):
    t, k = both(pair, lambda a, m: a.predict(m, inputs, batch_size=2))
    assert t.shape == (3, 10)
    np.testing.assert_allclose(t, k, rtol=RTOL, atol=ATOL)
    assert not np.allclose(t.sum(axis=1), 1.0)  # logits, the final softmax stepped over in both


@pytest.mark.parametrize("score", ["logit", "prob", "logprob"])
@pytest.mark.parametrize("fast", [True, False])
def test_score_gradient(pair, inputs, score, fast):
    t, k = both(pair, lambda a, m: a.score_gradient(m, inputs, [None, 4, 2], score, fast))
    np.testing.assert_array_equal(t.targets, k.targets)
    np.testing.assert_allclose(t.logits, k.logits, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(t.gradient, k.gradient, rtol=RTOL, atol=ATOL * np.abs(t.gradient).max())


@pytest.mark.parametrize("fast", [True, False])
def test_layer_gradient(pair, inputs, fast):
    t, k = both(pair, lambda a, m: a.layer_gradient(m, "L4", inputs, [1, None, 9], "logit", fast))
    assert t.activations.shape == (3, 32, 32, 32)
    np.testing.assert_allclose(t.activations, k.activations, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(t.gradient, k.gradient, rtol=RTOL, atol=ATOL * np.abs(t.gradient).max())
    np.testing.assert_array_equal(t.targets, k.targets)


@pytest.mark.parametrize("fast", [True, False])
def test_unit_gradients(pair, inputs, fast):
    units = np.array([[0, 0, 0], [3, 5, 7], [7, 7, 63]])
    (tg, tv), (kg, kv) = both(pair, lambda a, m: a.unit_gradients(m, "L6", units, inputs[0], fast=fast))
    np.testing.assert_allclose(tv, kv, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(tg, kg, rtol=RTOL, atol=ATOL * max(np.abs(tg).max(), 1e-12))


def test_support_map_draws_the_same_channel_weights(pair, inputs):
    t, k = both(pair, lambda a, m: a.support_map(m, "L5", (3, 4), inputs, seed=11))
    np.testing.assert_allclose(t, k, rtol=RTOL, atol=ATOL * t.max())


@pytest.mark.parametrize("rule", ["guided", "deconvnet", "linearised"])
def test_modified_copies(pair, inputs, rule):
    def run(a, m):
        copy = a.modified_copy(m, rule, probe=inputs[:1])
        return a.score_gradient(copy, inputs, [1, 2, 3], "logit", False).gradient

    t, k = both(pair, run)
    np.testing.assert_allclose(t, k, rtol=RTOL, atol=ATOL * np.abs(t).max())


def test_reinit_copies_redraw_exactly_the_named_layers(pair, inputs):
    for adapter, model in pair:
        before = adapter.predict(model, inputs)
        copy = adapter.modified_copy(model, "reinit", layers=["L6"], seed=1)
        again = adapter.modified_copy(model, "reinit", layers=["L6"], seed=1)
        np.testing.assert_array_equal(adapter.predict(copy, inputs), adapter.predict(again, inputs))
        assert not np.allclose(adapter.predict(copy, inputs), before)
        np.testing.assert_array_equal(adapter.predict(model, inputs), before)  # the model is untouched
        # L1..L5 keep their weights: their activations are unchanged.
        a = adapter.layer_gradient(model, "L5", inputs, [0, 0, 0]).activations
        b = adapter.layer_gradient(copy, "L5", inputs, [0, 0, 0]).activations
        np.testing.assert_array_equal(a, b)


def test_trace_fields(pair):
    t, k = both(pair, lambda a, m: a.trace_fields(m, (1, 128, 128)))
    for name in ("L1", "L2", "L3", "L4", "L5", "L6"):
        assert (t[name].size, t[name].stride, t[name].padding) == (k[name].size, k[name].stride, k[name].padding)
        for unit in ((0, 0), (3, 5), (t[name].spatial_shape[0] - 1, 0)):
            assert t[name].rect(unit) == k[name].rect(unit)


def test_layers_and_input_shape(pair):
    t, k = both(pair, lambda a, m: a.layer_names(m))
    assert [n for n in t if n in k] == [f"L{i}" for i in range(1, 7)]
    (ta, tm), (ka, km) = pair
    assert ta.resolve_layer(tm, "L3")[0] == ka.resolve_layer(km, "L3")[0] == "L3"
    assert ta.default_input_shape(tm) == ka.default_input_shape(km) == (1, 128, 128)


def test_predict_fast_equals_the_plain_pass(pair, inputs):
    t, k = both(pair, lambda a, m: a.predict(m, inputs, batch_size=2, fast=True))
    t0, k0 = both(pair, lambda a, m: a.predict(m, inputs, batch_size=2, fast=False))
    np.testing.assert_allclose(t, t0, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(k, k0, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(t, k, rtol=RTOL, atol=ATOL)


def test_parameter_blocks_are_the_same_layers_top_first(pair):
    (ta, tm), (ka, km) = pair
    t, k = ta.parameter_blocks(tm), ka.parameter_blocks(km)
    # PyTorch names the modules inside the seed CNN's stages (L6.conv), Keras the layers (L6): the same weights
    assert [name.split(".")[0] for name in t] == ["head", "L6", "L5", "L4", "L3", "L2", "L1"]
    assert k == ["dense", "L6", "L5", "L4", "L3", "L2", "L1"]
    sizes_t = [sum(p.numel() for p in tm.get_submodule(name).parameters()) for name in t]
    sizes_k = [sum(int(np.prod(w.shape)) for w in km.get_layer(name).weights) for name in k]
    assert sizes_t == sizes_k and sizes_t[0] == 64 * 10 + 10  # the dense layer first


def test_kept_parameters_none_in_the_seed_cnn(pair):
    for adapter, model in pair:
        blocks = adapter.parameter_blocks(model)
        assert adapter.kept_parameters(model, blocks) == {}
        assert adapter.kept_parameters(model, blocks, outside=True) == {}
        # with only the top block listed, everything below it is outside the blocks, by name
        outside = adapter.kept_parameters(model, blocks[:1], outside=True)[""]
        assert len(outside) == 12 and all("L" in name for name in outside)


def test_structure_key_sees_geometry_not_weights(pair):
    from gradsight.adapters.keras.models import keras_seed_cnn
    from gradsight.adapters.torch.zoo import seed_cnn

    others = (seed_cnn("torch", seed=3), keras_seed_cnn(seed=3, classes=5))  # other padding / other class count
    for (adapter, model), other in zip(pair, others):
        key = adapter.structure_key(model)
        redrawn = adapter.modified_copy(model, "reinit", layers=adapter.parameter_blocks(model), seed=9)
        assert adapter.structure_key(redrawn) == key  # new weights, same geometry
        assert adapter.structure_key(other) != key
        assert adapter.structure_key(model) == key  # stable


def test_untraced_layer_is_pytorch_only(pair, inputs):
    from gradsight.adapters.protocol import UntracedLayer

    (ta, tm), (ka, km) = pair
    assert isinstance(ta, UntracedLayer) and not isinstance(ka, UntracedLayer)
    assert not hasattr(ka, "untraced_layer")
    # the grid read from a forward pass is the one the trace computes
    axes, shape = ta.untraced_layer(tm, "L4", inputs[0])
    field = ta.trace_fields(tm, (1, 128, 128))["L4"]
    assert axes is None and shape == (*field.spatial_shape, 32)


def test_unchanged_during_changes_no_result(pair, inputs):
    for adapter, model in pair:
        outside = adapter.score_gradient(model, inputs, [1, None, 0])
        with adapter.unchanged_during(model):
            inside = [adapter.score_gradient(model, inputs[i:i + 1], [t]) for i, t in enumerate([1, None, 0])]
        np.testing.assert_allclose(np.concatenate([o.gradient for o in inside]), outside.gradient, rtol=RTOL,
                                   atol=ATOL * np.abs(outside.gradient).max())


def test_every_protocol_method_is_checked_here():
    from gradsight.adapters.protocol import ModelAdapter

    members = {name for name in vars(ModelAdapter) if not name.startswith("_") and callable(getattr(ModelAdapter,
                                                                                                  name))}
    checked = {"predict", "score_gradient", "layer_gradient", "unit_gradients", "support_map", "modified_copy",
               "parameter_blocks", "kept_parameters", "structure_key", "trace_fields", "resolve_layer",
               "layer_names", "default_input_shape", "unchanged_during"}
    assert members == checked
