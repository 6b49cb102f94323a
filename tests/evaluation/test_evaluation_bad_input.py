"""Bad input to the sanity checks and faithfulness gets one clear BadInputError, before any work is done."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from evaluation_models import additive_model, normal_inputs
from testkit import small_cnn

from gradsight.errors import BadInputError
from gradsight.evaluation.faithfulness import faithfulness
from gradsight.evaluation.sanity import sanity_check
from gradsight.evaluation.similarity import similarities


@pytest.fixture
def net_and_x():
    return small_cnn(seed=0), normal_inputs(1, 16, seed=0)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"metric": "delete"}, ["metric", "deletion, insertion", "'delete'"]),
    ({"steps": 0}, ["steps", ">= 1", "0"]),
    ({"steps": -3}, ["steps", ">= 1"]),
    ({"steps": 2.5}, ["steps", "whole number"]),
    ({"steps": 16 * 16 + 1}, ["steps", "at most the number of pixels (256)"]),
    ({"batch_size": 0}, ["batch_size"]),
    ({"score": "probability"}, ["score", "prob"]),
    ({"baseline": float("nan")}, ["baseline", "finite"]),
    ({"baseline": np.zeros((3, 3, 3))}, ["baseline", "shape"]),
])
def test_faithfulness_refuses_bad_options_with_one_message(net_and_x, monkeypatch, kwargs, words):
    net, x = net_and_x
    import gradsight.evaluation.faithfulness as module

    monkeypatch.setattr(module, "attribute", lambda *a, **k: pytest.fail("the map was computed before refusing"))
    with pytest.raises(BadInputError) as err:
        faithfulness(net, x, method="gradient", **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_a_method_option_named_like_a_metric_option_is_not_taken_silently(net_and_x):
    net, x = net_and_x
    with pytest.raises(BadInputError, match="n_step"):
        faithfulness(net, x, method="integrated_gradients", n_step=8)  # a typo of n_steps


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"order": "bottom_up"}, ["order", "cascade, independent"]),
    ({"methods": []}, ["methods", "at least one"]),
    ({"threshold": 1.5}, ["threshold", "between -1 and 1"]),
    ({"blocks": []}, ["blocks", "at least one"]),
])
def test_sanity_check_refuses_bad_options_with_one_message(net_and_x, kwargs, words):
    net, x = net_and_x
    with pytest.raises(BadInputError) as err:
        sanity_check(net, x, **({"methods": ["gradient"]} | kwargs))
    for word in words:
        assert word in str(err.value)


def test_a_model_without_reinitialisable_layers_is_refused(monkeypatch):
    x = normal_inputs(1, 8, channels=1, seed=0)
    # parameters, but no layer with an initialiser of its own (reset_parameters): nothing to randomise
    with pytest.raises(BadInputError, match="re-initialise") as err:
        sanity_check(additive_model(np.ones((8, 8))), x, methods=["gradient"])
    assert "\n" not in str(err.value)
    # no parameters at all
    with pytest.raises(BadInputError, match="re-initialise"):
        sanity_check(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Softmax(dim=1)).eval(), x,
                     methods=["gradient"])


def test_a_block_without_parameters_is_refused_before_any_map_is_computed(net_and_x, monkeypatch):
    net, x = net_and_x
    import gradsight.evaluation.sanity as module

    monkeypatch.setattr(module, "attribute", lambda *a, **k: pytest.fail("a map was computed before refusing"))
    with pytest.raises(BadInputError, match="'2'"):  # net[2] is a ReLU
        sanity_check(net, x, methods=["gradient"], blocks=["12", "2"])


def test_maps_too_small_for_the_papers_similarities_are_refused():
    with pytest.raises(BadInputError, match="7 x 7"):
        similarities(np.ones((5, 9)), np.ones((5, 9)))
