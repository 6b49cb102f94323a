"""Loading a model: ``load_model`` for names and ``as_loaded_model`` for anything, both with
``architecture_only``; ``package.module:factory`` parsed once (the runner uses the registry's); the seed CNN's
architecture written once for both frameworks."""

from __future__ import annotations

import textwrap

import pytest
import torch
from testkit import TINY_PREP, small_cnn
from torch import nn

import gradsight
from gradsight.models import names
from gradsight.models.registry import as_loaded_model, load_model
from gradsight.models.spec import imagenet_preprocess


def test_a_framework_model_gets_imagenet_preprocessing_and_with_architecture_only_its_input_shape():
    net = small_cnn()
    loaded = as_loaded_model(net)
    assert loaded.module is net and loaded.spec.framework == "torch" and loaded.name == "Sequential"
    assert loaded.preprocess == imagenet_preprocess() and loaded.spec.input_shape is None
    # architecture only: the first convolution's 3 channels at 224 x 224 (what rf/node trace by default)
    network = as_loaded_model(net, architecture_only=True)
    assert network.module is net and network.spec.input_shape == (3, 224, 224)
    assert as_loaded_model(net, preprocess=TINY_PREP).preprocess is TINY_PREP


def test_a_loaded_model_passes_through_and_preprocess_replaces_its_own():
    loaded = gradsight.LoadedModel(small_cnn(), gradsight.ModelSpec("mine", "torch", TINY_PREP, ("a", "b"), "w"))
    assert as_loaded_model(loaded) is loaded and as_loaded_model(loaded, architecture_only=True) is loaded
    other = imagenet_preprocess(resize=64, crop=56)
    swapped = as_loaded_model(loaded, preprocess=other)
    assert swapped.module is loaded.module and swapped.preprocess is other
    assert (swapped.name, swapped.class_names, swapped.spec.weights) == ("mine", ("a", "b"), "w")
    with pytest.raises(TypeError):  # preprocess is keyword-only: no silent positional mix-ups
        as_loaded_model(loaded, other)


def test_a_name_with_and_without_weights_is_one_network():
    # The seed CNN's weights are seeded: with and without architecture_only they are the same numbers.
    for name in names.SEED_NETWORKS:
        full, bare = load_model(name), as_loaded_model(name, architecture_only=True)
        assert bare.spec.input_shape == full.spec.input_shape == names.SEED_INPUT
        state = bare.module.state_dict()
        assert all(torch.equal(state[k], v) for k, v in full.module.state_dict().items())
    network = load_model("resnet18", architecture_only=True)
    assert network.spec.weights == "random (architecture only)" and network.spec.input_shape == (3, 224, 224)
    assert not network.module.training


def test_the_old_synonyms_are_gone():
    import gradsight.adapters.torch.models as torch_models
    import gradsight.methods.saliency as saliency
    import gradsight.models.registry as registry
    import gradsight.receptive.analytic as analytic

    assert not hasattr(registry, "load_network") and not hasattr(analytic, "as_network")
    assert not hasattr(torch_models, "build_torch_network") and not hasattr(gradsight, "load_network")
    assert saliency.as_loaded_model is as_loaded_model  # used there, defined once in models/


FACTORY = """
    from torch import nn
    from gradsight.models.spec import LoadedModel, ModelSpec
    from gradsight.preprocess import Preprocess

    def net():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    BUILT = []

    def loaded():
        model = LoadedModel(net().eval(), ModelSpec("own-name", "torch", Preprocess(resize=20, crop=16)))
        BUILT.append(model)
        return model
"""


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "gs_loading_factory.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    return importlib.import_module("gs_loading_factory")


def test_a_factory_may_return_a_loaded_model_which_is_used_as_it_is(factory, tmp_path):
    from gradsight.runs.model import load_named, resolve_model

    for load in (load_model, load_named, lambda n: resolve_model(n)[0],
                 lambda n: as_loaded_model(n, architecture_only=True)):
        model = load("gs_loading_factory:loaded")
        assert model is factory.BUILT[-1] and model.name == "own-name"
    # a weights file goes into the factory's module, and the spec says where the weights came from
    state = {k: torch.full_like(v, 0.5) for k, v in factory.net().state_dict().items()}
    torch.save(state, tmp_path / "w.pth")
    model = load_model("gs_loading_factory:loaded", weights=tmp_path / "w.pth")
    assert model.module is factory.BUILT[-1].module and model.spec.weights == f"file: {tmp_path / 'w.pth'}"
    assert all(torch.equal(model.module.state_dict()[k], v) for k, v in state.items())
    assert model.preprocess == factory.BUILT[-1].preprocess and model.name == "own-name"


def test_a_factory_network_gets_the_same_spec_from_the_runner_and_the_registry(factory):
    from gradsight.runs.model import load_named

    a, b = load_named("gs_loading_factory:net"), load_model("gs_loading_factory:net")
    assert a.spec == b.spec and a.name == "gs_loading_factory:net" and a.spec.weights == "from the factory"
    assert a.preprocess == imagenet_preprocess() and not a.module.training


def test_the_runner_passes_download_through(monkeypatch):
    import gradsight.models.registry as registry
    from gradsight.runs.model import resolve_model

    calls = []
    net = small_cnn()
    monkeypatch.setattr(registry, "load_model", lambda name, **kw: calls.append((name, kw)) or as_loaded_model(net))
    loaded, recipe = resolve_model("resnet50", "w.pth", download=True)
    assert loaded.module is net and calls == [("resnet50", {"weights": "w.pth", "download": True})]
    recipe.load()  # a worker reads the cache the driver filled: it never downloads
    assert calls[-1] == ("resnet50", {"weights": "w.pth", "download": False})
    resolve_model("resnet50")
    assert calls[-1] == ("resnet50", {"weights": None, "download": False})


def _layers(net: nn.Module) -> list[tuple]:
    return [(c.kernel_size[0], c.stride[0], c.out_channels) for c in net.modules() if isinstance(c, nn.Conv2d)]


def test_the_seed_cnn_is_described_once_for_both_frameworks():
    import gradsight.adapters.torch.zoo as torch_zoo

    expected = list(zip(names.SEED_KERNELS, names.SEED_STRIDES, names.SEED_CHANNELS))
    assert expected == [(5, 1, 16), (5, 2, 16), (3, 1, 32), (3, 2, 32), (3, 1, 64), (3, 2, 64)]  # the exercise's
    for padding in torch_zoo.PADDINGS:
        assert _layers(torch_zoo.seed_cnn(padding)) == expected
    assert torch_zoo.seed_cnn().gradsight_input_shape == names.SEED_INPUT == (1, 128, 128)
    keras = pytest.importorskip("keras")
    from gradsight.adapters.keras.zoo import keras_seed_cnn

    model = keras_seed_cnn()
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.kernel_size[0], c.strides[0], c.filters) for c in convs] == expected
    assert tuple(model.inputs[0].shape[1:]) == (128, 128, 1)
