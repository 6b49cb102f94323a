"""One name, one network: every entry point builds the same architecture for a name; and resolving
``package.module:factory`` names fails with one clear line, never a traceback."""

from __future__ import annotations

import textwrap

import pytest
from torch import nn

import gradsight
from gradsight.cli import main


def architecture(name: str):
    """The network a name builds for receptive fields and node gradients (no weights needed)."""
    return gradsight.load_model(name, architecture_only=True)


def _geometry(module: nn.Module) -> list[tuple]:
    """Every module's type and, for convolutions and pools, the numbers that decide the pixel grid."""
    rows = []
    for name, sub in module.named_modules():
        row = (name, type(sub).__name__)
        if isinstance(sub, nn.Conv2d):
            row += (sub.kernel_size, sub.stride, sub.padding, sub.dilation, sub.groups)
        if isinstance(sub, (nn.MaxPool2d, nn.AvgPool2d)):
            row += (sub.kernel_size, sub.stride, sub.padding)
        rows.append(row)
    return rows


def test_efficientnet_lite0_is_one_network_everywhere(embedded):
    # `saliency efficientnet_lite0` runs timm's tf_efficientnet_lite0 (TF 'same' padding: the extra pixel goes
    # bottom/right); `rf`/`node efficientnet_lite0` must analyse that network, not timm's symmetric-padding
    # efficientnet_lite0, whose border units see other pixels.
    network = architecture("efficientnet_lite0")
    assert _geometry(network.module) == _geometry(embedded.module)
    by_name = gradsight.receptive_field("efficientnet_lite0")
    by_model = gradsight.receptive_field(embedded.module, (224, 224))
    assert by_name.names() == by_model.names()
    for a, b in zip(by_name.layers, by_model.layers):
        assert (a.name, a.kind, a.output_shape, a.size, a.stride, a.padding) == \
               (b.name, b.kind, b.output_shape, b.size, b.stride, b.padding)
        if not a.is_global and len(a.spatial_shape) == 2:
            last = tuple(n - 1 for n in a.spatial_shape)
            assert a.rect((0, 0)) == b.rect((0, 0)) and a.rect(last) == b.rect(last), a.name
    # The stem: a 3x3 stride-2 convolution with TF 'same' padding on 224 rows pads 0 on top, 1 at the bottom
    # ((112 - 1) * 2 + 3 - 224 = 1 in total), so unit (0, 0) sees rows 0..2 (symmetric padding 1: rows 0..1).
    assert by_name["conv_stem"].rect((0, 0)) == ((0, 2), (0, 2))


def test_seed_cnn_names_load_the_same_network_as_rf(tmp_path):
    for name in ("seed-cnn", "seed-cnn-torch"):
        loaded = gradsight.load_model(name)
        network = architecture(name)
        assert _geometry(loaded.module) == _geometry(network.module)
        assert loaded.spec.model_input_shape() == network.spec.model_input_shape() == (1, 128, 128)


def test_curated_names_resolve_to_one_architecture():
    # A bare name found in both torchvision and timm must mean the same library's network with weights and
    # architecture only (torchvision first), and the curated names must not fall through to another library.
    assert type(architecture("resnet50").module).__module__.startswith("torchvision")
    assert type(architecture("efficientnet_lite0").module).__module__.startswith("timm")
    assert architecture("efficientnet_lite0").module.pretrained_cfg["architecture"] == "tf_efficientnet_lite0"
    from gradsight.adapters.torch.models import CURATED_ARCHITECTURES
    from gradsight.models.registry import CURATED

    assert set(CURATED_ARCHITECTURES) == set(CURATED)


# --- package.module:factory ---------------------------------------------------------------------------------

FACTORIES = {
    "gs_raises_on_import": "raise RuntimeError('no GPU here')\n",
    "gs_bad_syntax": "def make(:\n    pass\n",
    "gs_factories": """
        from torch import nn

        def boom():
            raise ValueError('width must be even')

        def needs_args(depth, width=3):
            return nn.Conv2d(3, depth, width)

        def not_a_model():
            return 42

        def fine():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())

        NOT_CALLABLE = 3
    """,
}


@pytest.fixture
def factory_modules(tmp_path, monkeypatch):
    for name, code in FACTORIES.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name, words", [
    (":x", ["module name before ':'", "':x'"]),
    ("gs_factories:", ["factory name after ':'"]),
    ("gs_raises_on_import:make", ["RuntimeError", "no GPU here", "importing 'gs_raises_on_import'"]),
    ("gs_bad_syntax:make", ["SyntaxError", "gs_bad_syntax.py", "line 1"]),
    ("no_such_module_xyz:make", ["no_such_module_xyz"]),
    ("gs_factories:boom", ["ValueError", "width must be even", "gs_factories.boom()"]),
    ("gs_factories:needs_args", ["no arguments", "depth"]),
    ("gs_factories:not_a_model", ["torch.nn.Module", "int"]),
    ("gs_factories:NOT_CALLABLE", ["NOT_CALLABLE"]),
    ("gs_factories:nothing_here", ["nothing_here"]),
])
@pytest.mark.parametrize("command", ["rf", "node"])
def test_python_path_errors_are_one_line(factory_modules, capsys, name, words, command):
    argv = [command, name] + (["--layer", "0", "--unit", "0", "0", "0", "--out",
                               str(factory_modules / "g.png")] if command == "node" else [])
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("gradsight: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert not (factory_modules / "g.png").exists()


def test_python_path_errors_are_bad_input_errors(factory_modules):
    for name in ("gs_raises_on_import:make", "gs_bad_syntax:make", "gs_factories:boom", "gs_factories:needs_args",
                 ":x"):
        with pytest.raises(gradsight.BadInputError) as info:
            gradsight.receptive_field(name)
        assert info.value.expected and info.value.got and info.value.fix, name


def test_python_path_factory_still_works(factory_modules):
    report = gradsight.receptive_field("gs_factories:fine", (16, 16))
    assert report["0"].size == (3, 3)
    # load_model takes the same name (the same network), with a state dict on top if given
    import torch

    built = architecture("gs_factories:fine").module
    state = {k: v + 1 for k, v in built.state_dict().items()}
    torch.save(state, factory_modules / "fine.pth")
    loaded = gradsight.load_model("gs_factories:fine", weights=factory_modules / "fine.pth")
    assert _geometry(loaded.module) == _geometry(built) and not loaded.module.training
    assert all(torch.equal(loaded.module.state_dict()[k], v) for k, v in state.items())
    assert loaded.spec.weights == f"file: {factory_modules / 'fine.pth'}"


def test_seed_cnn_loads_a_weights_file(tmp_path):
    import torch

    state = {k: v * 2 for k, v in architecture("seed-cnn-torch").module.state_dict().items()}
    torch.save(state, tmp_path / "seed.pth")
    loaded = gradsight.load_model("seed-cnn-torch", weights=tmp_path / "seed.pth")
    assert all(torch.equal(loaded.module.state_dict()[k], v) for k, v in state.items())
    assert loaded.spec.weights == f"file: {tmp_path / 'seed.pth'}"


def test_architecture_only_networks_default_to_the_input_size_their_weights_use():
    import timm
    import torchvision

    # rf/node analyse a name at the size saliency feeds it: the crop of its published preprocessing
    crop = torchvision.models.Inception_V3_Weights.DEFAULT.transforms().crop_size  # [299]
    assert architecture("inception_v3").spec.model_input_shape() == (3, crop[0], crop[0])
    cfg = timm.get_pretrained_cfg("inception_v3").to_dict()
    assert architecture("timm:inception_v3").spec.model_input_shape() == tuple(cfg["input_size"]) == (3, 299, 299)
    assert architecture("resnet50").spec.model_input_shape() == (3, 224, 224)
