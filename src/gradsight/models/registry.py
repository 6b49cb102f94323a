"""Model names the CLI and ``load_model`` understand.

Example:
    >>> model = load_model("efficientnet_lite0")        # embedded weights, no download  # doctest: +SKIP
    >>> model.spec.preprocess.interpolation                                               # doctest: +SKIP
    'bicubic'

Names: ``efficientnet_lite0`` (the embedded default), ``resnet50``, any torchvision classifier as
``torchvision:NAME`` and any timm model as ``timm:NAME`` (a bare name is looked up in both); Keras models as
``keras:resnet50``, ``keras:seed-cnn`` or ``keras:NAME`` of keras.applications; the seed CNNs ``seed-cnn`` and
``seed-cnn-torch``; and ``package.module:factory``, a function called with no arguments. Weights never
download unless ``download=True``; ``weights=FILE`` loads a local state dict with ``weights_only=True``.

One name is one network: ``load_model`` (with weights) and ``load_network`` (architecture only, for receptive
fields and node gradients) build the same architecture for every name.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

from ..errors import BadInputError, UnknownNameError
from .names import CURATED, DEFAULT_MODEL, SEED_NETWORKS  # noqa: F401  (the names this module resolves)
from .spec import LoadedModel

_LIBRARY_PREFIXES = ("torchvision", "tv", "timm", "keras")


def is_factory_path(name: str) -> bool:
    """True for ``package.module:factory`` (a ':' whose prefix is not a library such as 'timm' or 'keras')."""
    prefix, sep, _ = name.partition(":")
    return bool(sep) and prefix not in _LIBRARY_PREFIXES


def load_model(name: str = DEFAULT_MODEL, *, weights: str | Path | None = None,
               download: bool = False) -> LoadedModel:
    """Build the named model in eval mode with its weights, preprocessing and class names."""
    if name.startswith("keras:"):
        from ..adapters.keras.models import load_keras_model

        return load_keras_model(name, weights=weights, download=download)
    if is_factory_path(name):
        return _factory_model(name, weights)
    from ..adapters.torch.models import load_torch_model

    return load_torch_model(name, weights=weights, download=download)


def load_network(name: str) -> LoadedModel:
    """A network for receptive fields and node gradients: weights are not needed (random ones are used)."""
    if name.startswith("keras:"):
        from ..adapters.keras.models import load_keras_model

        return load_keras_model(name, architecture_only=True)
    if is_factory_path(name):
        return network_from_factory(name)
    from ..adapters.torch.models import build_torch_network

    return build_torch_network(name)


def network_from_factory(path: str) -> LoadedModel:
    """The network ``package.module:factory()`` returns (a ``torch.nn.Module`` or a ``keras.Model``).

    Example:
        >>> load_network("mypackage.nets:build").spec.weights                         # doctest: +SKIP
        'from the factory'

    Every way this can fail (no such module, the module raising on import, a syntax error, a factory that
    needs arguments, raises, or returns something else) is one BadInputError naming the cause.
    """
    net, framework = _call_factory(path)
    if framework == "torch":
        from ..adapters.torch.models import factory_spec
    else:
        from ..adapters.keras.models import factory_spec
    return LoadedModel(net, factory_spec(net, path))


def _factory_model(path: str, weights: str | Path | None) -> LoadedModel:
    from ..preprocess import Preprocess
    from .spec import ModelSpec, imagenet_preprocess

    network = network_from_factory(path)
    source = network.spec.weights
    if weights is not None:
        if network.spec.framework == "torch":
            from ..adapters.torch.models import load_weights_into
        else:
            from ..adapters.keras.models import load_weights_into
        load_weights_into(network.module, weights)
        source = f"file: {weights}"
    # As for a module passed directly: ImageNet preprocessing (RGB models) unless the user gives another.
    shape = network.spec.input_shape
    channels = shape[0] if shape else 3
    prep = imagenet_preprocess() if channels == 3 else Preprocess(resize=None, crop=None, mean=(0.0,) * channels,
                                                                  std=(1.0,) * channels)
    return LoadedModel(network.module, ModelSpec(path, network.spec.framework, prep, None, source, shape))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def _call_factory(path: str):
    what = f"model {path!r}"
    expected = "'package.module:factory', a module to import and a function in it that returns the network"
    module_name, _, factory_name = path.partition(":")
    if not module_name.strip() or not factory_name.strip():
        missing = "no module name before ':'" if not module_name.strip() else "no factory name after ':'"
        raise BadInputError(what, expected=expected, got=f"{path!r} ({missing})",
                            fix="e.g. 'mypackage.nets:build'; library models are 'timm:NAME', "
                                "'torchvision:NAME' or 'keras:NAME'")
    module = _import(module_name, what)
    qualified = f"{module_name}.{factory_name}"
    if not hasattr(module, factory_name):
        raise UnknownNameError(f"factory in {module_name}", factory_name,
                               [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")])
    factory = getattr(module, factory_name)
    if not callable(factory):
        raise BadInputError(what, expected=f"{qualified} to be a function that returns the network",
                            got=f"a {type(factory).__name__}", fix="name a function (or class) after ':'")
    needed = _required_parameters(factory)
    if needed:
        raise BadInputError(what, expected="a factory called with no arguments", got=f"{qualified}("
                            f"{', '.join(needed)}), which needs {len(needed)} argument{'s' * (len(needed) > 1)}",
                            fix=f"wrap it in a function with no arguments, e.g. def build(): return "
                                f"{factory_name}({', '.join(f'{n}=...' for n in needed)})")
    try:
        net = factory()
    except Exception as err:  # the user's code: any failure is reported as theirs, in one line
        raise BadInputError(what, expected=f"{qualified}() to return a network",
                            got=f"{_first_line(err)} (raised by {qualified}())",
                            fix=f"run {qualified}() in Python to see the full traceback") from None
    torch, keras = sys.modules.get("torch"), sys.modules.get("keras")
    if torch is not None and isinstance(net, torch.nn.Module):
        return net, "torch"
    if keras is not None and isinstance(net, keras.Model):
        return net, "keras"
    raise BadInputError(what, expected=f"{qualified}() to return a torch.nn.Module or a keras.Model",
                        got=f"an object of type {type(net).__module__}.{type(net).__qualname__}",
                        fix="return the network itself (not a tuple, a state dict or a LoadedModel)")


def _import(module_name: str, what: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise BadInputError(what, expected="an importable module before ':'",
                                got=f"no module named {err.name!r} on sys.path",
                                fix="check the spelling, and put its folder on PYTHONPATH (e.g. "
                                    "PYTHONPATH=. gradsight rf module:factory)") from None
        raise BadInputError(what, expected=f"{module_name!r} to import", got=f"{_first_line(err)} while "
                            f"importing {module_name!r}", fix="install what it imports") from None
    except SyntaxError as err:
        where = f"{Path(err.filename).name} line {err.lineno}" if err.filename else module_name
        raise BadInputError(what, expected=f"{module_name!r} to import", got=f"SyntaxError in {where}: {err.msg}",
                            fix="fix the syntax error") from None
    except (Exception, SystemExit) as err:  # the module's own code failed while importing
        raise BadInputError(what, expected=f"{module_name!r} to import", got=f"{_first_line(err)} while "
                            f"importing {module_name!r}",
                            fix=f"run python -c 'import {module_name}' to see the full traceback") from None


def _required_parameters(factory) -> list[str]:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return []
    return [p.name for p in signature.parameters.values() if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
