"""Finding a layer of a PyTorch model and running the model up to it, in eval mode.

Example:
    >>> name, module = resolve_module(net, "layer3")                  # doctest: +SKIP
    >>> with eval_mode(net):                                          # doctest: +SKIP
    ...     z = layer_output(net, module, x)                          # the model stops right after layer3
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ...errors import BadInputError, UnknownNameError

ROOT = "(model)"  # the name under which the whole model's output is reported

#: Activation modules: element-wise, so they keep a layer's layout, and linearised copies make them identities.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                       nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Softplus)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run ``model`` in eval mode and restore every submodule's own ``training`` flag, even on error."""
    # Only modules in training mode are touched: flipping the flag directly is much cheaper than .eval(),
    # which matters for node gradients that take about a millisecond.
    training = [m for m in model.modules() if m.training]
    for module in training:
        module.training = False
    try:
        yield model
    finally:
        for module in training:
            module.training = True


class _Reached(Exception):
    """Raised by a forward hook to stop the model once the layer of interest has run."""


def replace_submodule(root: nn.Module, dotted: str, new: nn.Module) -> None:
    """Put ``new`` where ``root.get_submodule(dotted)`` was (``dotted`` non-empty)."""
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def resolve_module(model: nn.Module, layer) -> tuple[str, nn.Module]:
    """(name, module) for a layer given by name, by module, or by index among the model's direct children."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise BadInputError("layer", expected="a submodule of the model", got=type(layer).__name__)
    if isinstance(layer, int) and not isinstance(layer, bool):
        children = list(model.named_children())
        if not -len(children) <= layer < len(children):
            raise BadInputError("layer index", expected=f"0..{len(children) - 1} (the model's direct children: "
                                f"{', '.join(n for n, _ in children[:8])}{'...' if len(children) > 8 else ''})",
                                got=str(layer), fix="or give the layer's name")
        return children[layer]
    if layer == ROOT:
        return ROOT, model
    if isinstance(layer, str) and layer:
        try:
            return layer, model.get_submodule(layer)  # direct: no walk over every module
        except AttributeError:
            pass
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return layer, modules[layer]
    raise UnknownNameError("layer", str(layer), [n for n in modules if n])


def layer_output(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of ``module`` when ``model`` runs on ``x``, stopping the model right after it."""
    captured = []

    def hook(mod, args, out):
        captured.append(out)
        raise _Reached

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not captured:
        raise BadInputError("layer", expected="a module that runs in the model's forward pass",
                            got="a module that never ran", fix="pick a layer from `gradsight rf MODEL`")
    out = captured[0]
    if not isinstance(out, torch.Tensor):
        raise BadInputError("layer output", expected="a tensor", got=type(out).__name__)
    return out
