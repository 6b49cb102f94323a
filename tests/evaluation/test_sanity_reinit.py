"""Re-initialisation for the sanity checks (PyTorch): a block's random weights depend only on the seed and its
name, and parameters that no initialiser of their own reaches are kept bit for bit and reported by name."""

from __future__ import annotations

import json
import warnings
import zlib

import numpy as np
import pytest
import torch
from evaluation_models import normal_inputs
from testkit import small_cnn
from torch import nn

from gradsight.adapters.torch.modifiers import kept_parameters, modified_copy, parameter_blocks
from gradsight.errors import BadInputError
from gradsight.evaluation.sanity import OUTSIDE, sanity_check
from gradsight.rendering.evaluation import sanity_figure


def state(net: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in net.state_dict().items() if k == prefix or k.startswith(prefix + ".")}


def test_a_blocks_weights_depend_only_on_the_seed_and_its_name():
    net = small_cnn(seed=1)
    blocks = parameter_blocks(net)
    assert blocks == ["12", "8", "7", "4", "3", "1", "0"]
    for k, block in enumerate(blocks):
        alone = modified_copy(net, "reinit", layers=[block], seed=3)  # the independent order's copy
        cascade = modified_copy(net, "reinit", layers=blocks[:k + 1], seed=3)
        shuffled = modified_copy(net, "reinit", layers=[block, *blocks[:k][::-1]], seed=3)
        again = modified_copy(net, "reinit", layers=[block], seed=3)
        other = modified_copy(net, "reinit", layers=[block], seed=4)
        for key, value in state(alone, block).items():
            for copy in (cascade, shuffled, again):
                assert torch.equal(copy.state_dict()[key], value), (block, key)
            if key.endswith("weight") and block in ("0", "3", "7", "12"):  # drawn, not constant
                assert not torch.equal(other.state_dict()[key], value), (block, key)
                assert not torch.equal(net.state_dict()[key], value), (block, key)


def test_the_stream_is_crc32_of_seed_and_path_as_on_keras():
    """Oracle: a fresh module of the same shape, reset under torch.manual_seed(crc32(f"{seed}/{name}"))."""
    net = small_cnn(seed=1)
    copy = modified_copy(net, "reinit", layers=["12", "7"], seed=3)
    for name, fresh in (("12", nn.Linear(16, 5)), ("7", nn.Conv2d(8, 16, 3, padding=1))):
        torch.manual_seed(zlib.crc32(f"3/{name}".encode()))
        fresh.reset_parameters()
        assert torch.equal(copy.get_submodule(name).weight, fresh.weight)
        assert torch.equal(copy.get_submodule(name).bias, fresh.bias)


def test_the_global_random_state_is_left_alone():
    net = small_cnn(seed=1)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    modified_copy(net, "reinit", layers=["12", "0"], seed=3)
    assert torch.equal(torch.rand(3), expected)


class Scaled(nn.Module):
    """A convolution times a per-channel scale held as a bare nn.Parameter (as ConvNeXt's layer_scale)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gamma = nn.Parameter(torch.linspace(0.5, 2.0, 4).reshape(4, 1, 1))

    def forward(self, x):
        return self.conv(x) * self.gamma


class WithOffset(nn.Module):
    """Scaled blocks and a classifier, plus a bare parameter held by the model itself (as a ViT's class token)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(Scaled(), nn.ReLU(), Scaled(), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        self.features[2].conv = nn.Conv2d(4, 4, 3, padding=1)
        self.offset = nn.Parameter(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x):
        return self.head(self.features(x)) + self.offset


def test_bare_parameters_are_kept_bit_for_bit_and_listed():
    torch.manual_seed(0)
    net = WithOffset().eval()
    blocks = parameter_blocks(net)
    assert blocks == ["head.2", "features.2", "features.0"]
    assert kept_parameters(net, blocks) == {"features.2": ["features.2.gamma"], "features.0": ["features.0.gamma"]}
    assert kept_parameters(net, blocks, outside=True)[""] == ["offset"]
    assert kept_parameters(net, ["head"]) == {}
    copy = modified_copy(net, "reinit", layers=blocks, seed=0)
    for name in ("features.0.gamma", "features.2.gamma", "offset"):
        # bit for bit: the same bytes, not merely close values
        before, after = net.get_parameter(name), copy.get_parameter(name)
        assert before.detach().numpy().tobytes() == after.detach().numpy().tobytes(), name
    for name in ("features.0.conv.weight", "features.2.conv.weight", "head.2.weight"):
        assert not torch.equal(net.get_parameter(name), copy.get_parameter(name)), name


def test_the_sanity_check_reports_kept_parameters_in_the_result_json_figure_and_one_warning():
    torch.manual_seed(0)
    net, x = WithOffset().eval(), normal_inputs(1, 12, seed=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = sanity_check(net, x, methods=["gradient"], seed=1)
    kept_warnings = [w for w in caught if issubclass(w.category, UserWarning) and "gamma" in str(w.message)]
    assert len(kept_warnings) == 1
    message = str(kept_warnings[0].message)
    assert all(name in message for name in ("features.0.gamma", "features.2.gamma", "offset"))
    assert report.kept == {"features.2": ("features.2.gamma",), "features.0": ("features.0.gamma",),
                           OUTSIDE: ("offset",)}
    data = json.loads(json.dumps(report.as_dict()))
    assert data["kept_parameters"] == {"features.2": ["features.2.gamma"], "features.0": ["features.0.gamma"],
                                       OUTSIDE: ["offset"]}
    assert "3 parameters keep the model's values" in data["verdict_rule"]
    assert "features.0.gamma" in data["verdict_rule"]
    texts = " ".join(t.get_text() for t in sanity_figure(report).findobj(lambda a: hasattr(a, "get_text")))
    assert "features.0.gamma" in texts and "offset" in texts
    # blocks named by the user: parameters outside them are the user's choice, not reported
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        named = sanity_check(net, x, methods=["gradient"], blocks=["head", "features.0"], seed=1)
    assert named.kept == {"features.0": ("features.0.gamma",)}
    assert sum("gamma" in str(w.message) for w in caught) == 1


def test_a_model_whose_parameters_are_all_redrawn_reports_nothing():
    net, x = small_cnn(seed=1), normal_inputs(1, 12, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        report = sanity_check(net, x, methods=["gradient"], seed=1)
    assert report.kept == {} and report.as_dict()["kept_parameters"] == {}
    assert "keep" not in report.as_dict()["verdict_rule"]


def test_a_named_block_with_nothing_to_redraw_is_refused_by_its_parameters_names():
    holder = nn.Module()
    holder.scale = nn.Parameter(torch.ones(3))
    net = nn.Sequential(nn.Conv2d(3, 3, 1), holder)
    with pytest.raises(BadInputError, match=r"'1'.*1\.scale"):
        modified_copy(net, "reinit", layers=["1"], seed=0)
    assert parameter_blocks(net) == ["0"]  # not a default block either
    assert kept_parameters(net, ["0"], outside=True) == {"": ["1.scale"]}


def test_convnext_tiny_first_block_keeps_its_layer_scale_and_says_so():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.convnext_tiny().eval()  # random weights, nothing downloaded
    block = "features.1.0"  # the first CNBlock: depthwise conv, LayerNorm, two Linear, and a bare layer_scale
    assert kept_parameters(net, [block]) == {block: [f"{block}.layer_scale"]}
    copy = modified_copy(net, "reinit", layers=[block], seed=0)
    before, after = net.state_dict(), copy.state_dict()
    assert before[f"{block}.layer_scale"].numpy().tobytes() == after[f"{block}.layer_scale"].numpy().tobytes()
    for key in (f"{block}.block.0.weight", f"{block}.block.3.weight", f"{block}.block.5.weight"):
        assert not torch.equal(before[key], after[key]), key
    assert torch.equal(after[f"{block}.block.2.weight"], torch.ones(96))  # LayerNorm back to its own init
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(block + "."))
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"features\.1\.0\.layer_scale"):
        report = sanity_check(net, x, methods=["gradient"], blocks=[block], seed=0)
    assert report.kept == {block: (f"{block}.layer_scale",)}
    assert report.as_dict()["kept_parameters"] == {block: [f"{block}.layer_scale"]}
