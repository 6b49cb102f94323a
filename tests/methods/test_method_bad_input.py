"""Bad input to the attribution methods: one clear error each, saying what was expected, what came, what to do.

The per-method files refuse each method's own bad options; this file checks the issue's list across methods
and that every message has the expected/got form (the CLI prints it as one line, exit 2: the lead's half).
"""

from __future__ import annotations

import pytest
from method_models import normal_inputs
from torch import nn

import gradsight
from gradsight.methods.attribute import attribute
from gradsight.methods.registry import list_methods

NO_RELU = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()

CASES = {
    "n_steps < 1": (dict(method="integrated_gradients", n_steps=0), "n_steps", "a whole number >= 1"),
    "negative noise level": (dict(method="smoothgrad", noise_level=-0.2), "noise_level", ">= 0"),
    "negative stdev": (dict(method="smoothgrad", stdev=-1.0), "stdev", ">= 0"),
    "CAM layer not spatial": (dict(method="grad_cam", layer="12"), "layer '12'", "spatial feature map"),
    "CAM layer pooled to 1x1": (dict(method="layer_cam", layer="10"), "CAM layer '10'", "more than one position"),
    "option the method does not take": (dict(method="gradient", n_steps=5), "option 'n_steps'", "no options"),
    "option of another method": (dict(method="grad_cam", window=8), "option 'window'", "layer=None"),
    "unknown variant": (dict(method="smoothgrad", variant="sq"), "variant", "mean, square, var"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_clear_message(cnn, case):
    options, what, expected = CASES[case]
    with pytest.raises(gradsight.BadInputError) as info:
        attribute(cnn, normal_inputs(1, 16), **options)
    message = str(info.value)
    assert message.startswith(what) and expected in message and "expected" in message and "got" in message
    assert "\n" not in message


def test_unknown_method_suggests_close_names(cnn):
    with pytest.raises(gradsight.UnknownNameError) as info:
        attribute(cnn, normal_inputs(1, 16), method="integrated_gradient")
    assert "integrated_gradients" in info.value.suggestions
    with pytest.raises(gradsight.UnknownNameError, match="gradcam|grad_cam"):
        attribute(cnn, normal_inputs(1, 16), method="gradcam")


def test_an_option_not_taken_lists_the_options_taken(cnn):
    with pytest.raises(gradsight.BadInputError) as info:
        attribute(cnn, normal_inputs(1, 16), method="integrated_gradients", steps=10)
    message = str(info.value)
    for name in ("n_steps=50", "rule='gausslegendre'", "baseline='zeros'"):
        assert name in message
    assert "did you mean 'n_steps'" in message.lower()


def test_guided_backprop_on_a_model_without_relu():
    with pytest.raises(gradsight.BadInputError, match="no ReLU"):
        attribute(NO_RELU, normal_inputs(1, 8), method="guided_backprop")


def test_cam_layer_not_found(cnn):
    with pytest.raises(gradsight.UnknownNameError, match="(?i)did you mean '3'"):
        attribute(cnn, normal_inputs(1, 16), method="grad_cam", layer="13")


def test_every_method_lists_its_options_with_the_papers_defaults():
    methods = {m["name"]: m for m in list_methods()}
    assert methods["smoothgrad"]["options"]["n_samples"] == 50
    assert methods["smoothgrad"]["options"]["noise_level"] == 0.15
    assert methods["smoothgrad"]["options"]["base_method"] == "gradient"
    assert methods["integrated_gradients"]["options"]["n_steps"] == 50
    assert methods["integrated_gradients"]["options"]["rule"] == "gausslegendre"
    assert methods["occlusion"]["options"]["fill"] == 0.0
    for name in ("gradient", "input_x_gradient", "smoothgrad", "integrated_gradients", "guided_backprop",
                 "deconvnet", "grad_cam", "grad_cam_pp", "layer_cam", "occlusion"):
        assert methods[name]["reference"] and "torch" in methods[name]["frameworks"]
