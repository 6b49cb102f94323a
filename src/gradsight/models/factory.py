"""``package.module:factory`` names: a function, called with no arguments, that returns the model.

Example:
    >>> is_factory_path("mypackage.nets:build"), is_factory_path("timm:resnet18")
    (True, False)
    >>> factory_model("mypackage.nets:build").spec.weights                     # doctest: +SKIP
    'from the factory'

The factory returns a ``torch.nn.Module``, a ``keras.Model`` (put in eval mode, ImageNet preprocessing for RGB
networks) or a ``LoadedModel`` (used as it is: the way to give a name its own preprocessing and class names).
Every way this can fail (no such module, the module raising on import, a syntax error, a factory that needs
arguments, raises, or returns something else) is one BadInputError naming the cause. ``registry.load_model``
is the entry point; this module only resolves the name.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import replace
from pathlib import Path

from ..errors import BadInputError, UnknownNameError
from .spec import LoadedModel, ModelSpec, imagenet_preprocess, plain_preprocess

_LIBRARY_PREFIXES = ("torchvision", "tv", "timm", "keras")


def is_factory_path(name: str) -> bool:
    """True for ``package.module:factory`` (a ':' whose prefix is not a library such as 'timm' or 'keras')."""
    prefix, sep, _ = name.partition(":")
    return bool(sep) and prefix not in _LIBRARY_PREFIXES


def factory_model(path: str, weights: str | Path | None = None, *, architecture_only: bool = False) -> LoadedModel:
    """The model ``path`` names, with ``weights`` (a file) loaded on top if given.

    ``architecture_only``: the network as the factory built it, with the input shape it is meant for (for
    receptive fields and node gradients); otherwise a bare network gets ImageNet preprocessing (RGB) or
    identity preprocessing (other channel counts), as a module passed directly does.
    """
    built = _call_factory(path)
    if isinstance(built, LoadedModel):
        network = built
    else:
        framework = "torch" if _is_torch(built) else "keras"
        if framework == "torch":
            from ..adapters.torch.models import factory_spec
        else:
            from ..adapters.keras.models import factory_spec
        network = LoadedModel(built, factory_spec(built, path))
    if architecture_only:
        return network
    source = network.spec.weights
    if weights is not None:
        if network.spec.framework == "torch":
            from ..adapters.torch.models import load_weights_into
        else:
            from ..adapters.keras.models import load_weights_into
        load_weights_into(network.module, weights)
        source = f"file: {weights}"
    if isinstance(built, LoadedModel):  # its own preprocessing and class names
        return built if weights is None else LoadedModel(built.module, replace(built.spec, weights=source))
    shape = network.spec.input_shape
    channels = shape[0] if shape else 3
    prep = imagenet_preprocess() if channels == 3 else plain_preprocess(channels)
    return LoadedModel(network.module, ModelSpec(path, network.spec.framework, prep, None, source, shape))


def _is_torch(net) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(net, torch.nn.Module)


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
    keras = sys.modules.get("keras")
    if isinstance(net, LoadedModel) or _is_torch(net) or (keras is not None and isinstance(net, keras.Model)):
        return net
    raise BadInputError(what, expected=f"{qualified}() to return a torch.nn.Module, a keras.Model or a "
                        "gradsight LoadedModel",
                        got=f"an object of type {type(net).__module__}.{type(net).__qualname__}",
                        fix="return the network itself (not a tuple or a state dict)")


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
