"""PyTorch primitives of the attribution family: forward-only scores, layer gradients, modified copies.

Example:
    >>> import numpy as np, torch                                                  # doctest: +SKIP
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
    ...                           torch.nn.Flatten(), torch.nn.Linear(4, 2))      # doctest: +SKIP
    >>> predict(net, np.zeros((5, 8, 8, 3), np.float32)).shape                     # doctest: +SKIP
    (5, 2)
    >>> guided = modified_copy(net, "guided")        # the user's net is untouched  # doctest: +SKIP

Arrays cross in channels-last layout (N, H, W, C), as for saliency. The rules of ``modified_copy`` are those of
``gradsight.adapters.common.MODIFY_RULES``; the copy's forward pass equals the model's (checked on a probe).
"""

from __future__ import annotations

import copy
import threading
import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ...errors import BadInputError, cause_of
from ..common import MODIFY_RULES, avoid_triton_tensorflow_clash
from .gradients import as_nchw
from .layers import ACTIVATIONS, resolve_module

avoid_triton_tensorflow_clash("torch")


# ---------------------------------------------------------------------------------------------------------
# Modified copies. Activations are replaced by modules that run a custom autograd Function: this is exact for
# in-place ReLUs and for one module called twice (torchvision's BasicBlock), which module hooks get wrong.

_SMOOTH = (nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.ELU, nn.SELU, nn.CELU, nn.Softplus)
_SMOOTH_OPS = {"silu", "silu_", "gelu", "gelu_", "hardswish", "hardswish_", "mish", "mish_", "elu", "elu_",
               "softplus"}
# ReLU-family operations the rules cannot modify when they run outside a replaced module (PReLU and RReLU have no
# guided or deconvnet rule at all).
_RELU_OPS = {"relu", "relu_", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "relu6", "threshold",
             "threshold_", "prelu", "_prelu_kernel", "rrelu", "rrelu_", "rrelu_with_noise", "rrelu_with_noise_"}
# A ReLU written otherwise: ``x.clamp(min=0)``, ``torch.clamp_min(x, 0)``, ``torch.maximum(x, zeros)``,
# ``torch.where(x > 0, x, 0)``, ``x * (x > 0)``: a clamp at 0, a maximum with 0, a comparison with 0.
_CLAMP_OPS = {"clamp", "clamp_", "clamp_min", "clamp_min_"}
_MAXIMUM_OPS = {"maximum", "fmax"}
_COMPARISON_OPS = {"gt", "ge", "lt", "le", "gt_", "ge_", "lt_", "le_"}


def _is_zero(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() > 0 and bool((value == 0).all())
    return isinstance(value, (int, float)) and value == 0


def _feature_map(value) -> bool:
    """A floating-point tensor that is not a scalar: what a ReLU gates (a scalar compared with 0 is a
    predicate, an integer one a counter or an index)."""
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim > 0


def _relu_in_disguise(op: str, args, kwargs) -> bool:
    """A clamp whose lower bound is 0, a maximum with zeros, or a comparison with 0 (the gate of a ReLU written
    as ``where`` or a product) of a feature map: a ReLU (or ReLU6) applied as a function."""
    if op in _CLAMP_OPS:  # [0, inf) or [0, 6]: a ReLU or ReLU6 (an input clamped to [0, 1] is not)
        low = args[1] if len(args) > 1 else kwargs.get("min")
        high = args[2] if len(args) > 2 else kwargs.get("max")
        return _feature_map(args[0]) and _is_zero(low) and \
            (high is None or (not isinstance(high, torch.Tensor) and high == 6))
    if op in _MAXIMUM_OPS:
        return len(args) > 1 and any(_is_zero(a) and _feature_map(b) for a, b in (args[:2], args[1::-1]))
    if op in _COMPARISON_OPS:
        return len(args) > 1 and _feature_map(args[0]) and _is_zero(args[1])
    return False


_INSIDE = threading.local()  # depth > 0 while a RuleActivation runs: its own relu is not a functional one


class _RuleFunction(torch.autograd.Function):
    """Forward: the activation itself. Backward: the guided or deconvnet rule instead of its derivative."""

    @staticmethod
    def forward(ctx, x, kind: str, slope: float, rule: str):
        ctx.save_for_backward(x)
        ctx.kind, ctx.slope, ctx.rule = kind, slope, rule
        if kind == "relu":
            return F.relu(x)
        if kind == "relu6":
            return F.hardtanh(x, 0.0, 6.0)
        return F.leaky_relu(x, slope)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.rule == "deconvnet":
            return (F.leaky_relu(g, ctx.slope) if ctx.kind == "leaky" else g.clamp(min=0)), None, None, None
        if ctx.kind == "relu":
            local = (x > 0).to(g.dtype)
        elif ctx.kind == "relu6":
            local = ((x > 0) & (x < 6)).to(g.dtype)
        else:
            local = torch.where(x > 0, torch.ones_like(x), torch.full_like(x, ctx.slope))
        return local * g.clamp(min=0), None, None, None


class RuleActivation(nn.Module):
    """A ReLU-family activation whose backward pass follows ``rule`` ('guided' or 'deconvnet')."""

    def __init__(self, kind: str, rule: str, slope: float = 0.0):
        super().__init__()
        self.kind, self.rule, self.slope = kind, rule, slope

    def forward(self, x):
        _INSIDE.depth = getattr(_INSIDE, "depth", 0) + 1
        try:
            return _RuleFunction.apply(x, self.kind, self.slope, self.rule)
        finally:
            _INSIDE.depth -= 1

    def extra_repr(self) -> str:
        return f"kind={self.kind}, rule={self.rule}" + (f", slope={self.slope}" if self.kind == "leaky" else "")


def _relu_kind(module: nn.Module) -> tuple[str, float] | None:
    if type(module) is nn.ReLU:
        return "relu", 0.0
    if type(module) is nn.ReLU6 or (type(module) is nn.Hardtanh and (module.min_val, module.max_val) == (0, 6)):
        return "relu6", 0.0
    if type(module) is nn.LeakyReLU:
        return "leaky", float(module.negative_slope)
    return None


class _RuleOps(TorchDispatchMode):
    """Counts ReLU-family and smooth activation operations that are not run by a RuleActivation."""

    def __init__(self):
        super().__init__()
        self.relu: dict[str, int] = {}
        self.smooth: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        op = func.__name__.split(".")[0]
        if not getattr(_INSIDE, "depth", 0):
            if op in _RELU_OPS or _relu_in_disguise(op, args, kwargs or {}):
                self.relu[op] = self.relu.get(op, 0) + 1
            elif op in _SMOOTH_OPS:
                self.smooth[op] = self.smooth.get(op, 0) + 1
        return func(*args, **(kwargs or {}))


def _private_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode, which the modified copies change; one clear error when the model
    holds something that cannot be copied (a lock, an open file, a generator)."""
    try:
        return copy.deepcopy(model).eval()
    except MemoryError:
        raise
    except Exception as err:  # deepcopy raises whatever the object's own copying raises
        raise BadInputError("model", expected="a model copy.deepcopy can copy (gradsight changes a private copy, "
                            "never your model)", got=f"{type(err).__name__}: {cause_of(err, 240)}",
                            fix="keep objects that cannot be copied (locks, files, generators) and tensors with "
                                "autograd history (store .detach() in hooks and attributes) out of the model, or "
                                "give that class a __deepcopy__") from None


def _rule_copy(model: nn.Module, rule: str, probe: torch.Tensor | None) -> nn.Module:
    clone = _private_copy(model)
    no_rule = sorted({type(m).__name__ for m in clone.modules() if isinstance(m, (nn.PReLU, nn.RReLU))})
    if no_rule:
        raise BadInputError("model", expected=f"ReLU, ReLU6 or LeakyReLU activations (the {rule} rule is defined "
                            "for them)", got=f"{', '.join(no_rule)}, which has no {rule} rule",
                            fix="use a method without modified ReLU rules (e.g. gradient, integrated_gradients)")
    smooth = sorted({type(m).__name__ for m in clone.modules() if isinstance(m, _SMOOTH)})
    if smooth:
        raise BadInputError("model", expected=f"ReLU-family activations for the {rule} rule (ReLU, ReLU6, "
                            "LeakyReLU)", got=f"smooth activations: {', '.join(smooth)}",
                            fix="use a method without modified ReLU rules (e.g. gradient, integrated_gradients)")
    replaced = 0
    for name, module in list(clone.named_modules()):
        kind = _relu_kind(module)
        if kind is not None and name:
            parent_name, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent_name) if parent_name else clone, child,
                    RuleActivation(kind[0], rule, kind[1]))
            replaced += 1
    if probe is not None:
        mode = _RuleOps()
        with torch.no_grad(), mode:
            clone(probe)
        if mode.smooth:
            raise BadInputError("model", expected=f"ReLU-family activations for the {rule} rule",
                                got="smooth activations applied as functions: " + ", ".join(sorted(mode.smooth)),
                                fix="use a method without modified ReLU rules (e.g. gradient)")
        if mode.relu:
            calls = ", ".join(f"{op} x{n}" for op, n in sorted(mode.relu.items()))
            raise BadInputError("model", expected=f"ReLUs as nn.ReLU/nn.ReLU6/nn.LeakyReLU modules (the {rule} "
                                "rule replaces modules)", got=f"ReLUs applied as functions in forward ({calls})",
                                fix="write these ReLUs (F.relu, torch.relu, a clamp or maximum at 0, a gate on x > 0, "
                                "F.prelu) as nn.ReLU/nn.ReLU6/nn.LeakyReLU modules, or use another method")
    if replaced == 0:
        raise BadInputError("model", expected=f"ReLU activations (the {rule} rule modifies their backward pass)",
                            got="a model with no ReLU, ReLU6 or LeakyReLU module",
                            fix="use a method that needs no ReLU (e.g. gradient, integrated_gradients)")
    return clone


def _stream(seed: int, name: str) -> int:
    """The random stream of the module at ``name`` (its dotted path; "" for the model itself): crc32 of
    f"{seed}/{name}", as the Keras adapter names a weight's stream. It depends on nothing else: not on the
    module's place in ``layers``, nor on which other blocks are listed, nor on the order (cascade or not)."""
    return zlib.crc32(f"{int(seed)}/{name}".encode())


def _resettable(block: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """(dotted path, module) of every module in ``block`` (itself included) with a ``reset_parameters``."""
    join = (lambda n: f"{prefix}.{n}" if n else prefix) if prefix else (lambda n: n)  # noqa: E731
    return [(join(n), m) for n, m in block.named_modules() if callable(getattr(m, "reset_parameters", None))]


def _unreset(block: nn.Module, prefix: str) -> list[str]:
    """Parameters of ``block`` (dotted paths) that no ``reset_parameters`` in it re-draws: a parameter counts
    as re-drawn when a module whose own parameter it is has a ``reset_parameters`` (torchvision ConvNeXt's
    ``layer_scale``, a custom module's bare nn.Parameter, MultiheadAttention's ``in_proj_weight`` are not)."""
    covered = {id(p) for _, m in _resettable(block, prefix) for p in m.parameters(recurse=False)}
    return [f"{prefix}.{n}" if prefix else n for n, p in block.named_parameters() if id(p) not in covered]


def kept_parameters(model: nn.Module, layers: Sequence, outside: bool = False) -> dict[str, list[str]]:
    """{block: its parameters that re-initialising ``layers`` keeps as they are}, blocks with none left out.
    ``outside``: also, under "", every parameter of the model that is in none of ``layers`` (a ViT's
    ``class_token`` held by the model itself, say).

    Example:
        >>> kept_parameters(torchvision.models.convnext_tiny(), ["features.1"])   # doctest: +SKIP
        {'features.1': ['features.1.0.layer_scale', 'features.1.1.layer_scale', 'features.1.2.layer_scale']}
    """
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    names = list(dict.fromkeys(resolve_module(model, layer)[0] for layer in layers))
    kept = {}
    for name in names:
        found = _unreset(model.get_submodule(name) if name else model, name)
        if found:
            kept[name] = found
    if outside:
        inside = {id(p) for name in names for p in (model.get_submodule(name) if name else model).parameters()}
        rest = [n for n, p in model.named_parameters() if id(p) not in inside]
        if rest:
            kept[""] = rest
    return kept


def _reinit_copy(model: nn.Module, layers: Sequence, seed: int) -> nn.Module:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise BadInputError("seed", expected="an integer", got=repr(seed))
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not layers:
        raise BadInputError("layers", expected="at least one layer to re-initialise", got="none")
    names = list(dict.fromkeys(resolve_module(model, layer)[0] for layer in layers))
    for name in names:  # before the copy: a refusal costs nothing
        target = model.get_submodule(name) if name else model
        if not _resettable(target, name):
            bare = _unreset(target, name)
            raise BadInputError(f"layer {name!r}", expected="a layer with parameters to re-initialise (a module "
                                "with reset_parameters)", got=f"{type(target).__name__} without any" if not bare
                                else f"{type(target).__name__} whose parameters no reset_parameters reaches "
                                f"({', '.join(bare[:3])}{' ...' if len(bare) > 3 else ''})",
                                fix="pick a layer with weights")
    clone = _private_copy(model)
    with torch.random.fork_rng(devices=[]):  # the user's global random state is left as it was
        for name in names:
            for path, module in _resettable(clone.get_submodule(name) if name else clone, name):
                # One stream per module, named by its path: the weights drawn for a module are the same
                # in a cascade, in an independent copy and in any list of blocks (and nested blocks agree).
                torch.manual_seed(_stream(seed, path))
                module.reset_parameters()
                if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                    module.reset_running_stats()
    return clone


def modified_copy(model: nn.Module, rule: str, *, layers: Sequence = (), seed: int = 0,
                  probe: np.ndarray | None = None) -> nn.Module:
    """A copy of ``model`` following ``rule`` (see MODIFY_RULES); the user's model is never touched.

    ``probe`` (one NHWC input) lets 'guided'/'deconvnet' find ReLUs applied as functions, which module
    replacement cannot modify: they are refused by name rather than giving a silently wrong map.
    """
    if rule not in MODIFY_RULES:
        raise BadInputError("rule", expected=f"one of {', '.join(MODIFY_RULES)}", got=repr(rule))
    if rule == "linearised":
        return linearised_copy(model)
    if rule == "reinit":
        return _reinit_copy(model, layers, seed)
    x = as_nchw(probe[:1], model) if probe is not None else None
    return _rule_copy(model, rule, x)



def parameter_blocks(model: nn.Module) -> list[str]:
    """Blocks to re-initialise in a sanity check, top (logits) first: the model's direct children that have
    parameters and a module with ``reset_parameters``, with sequences of stages (nn.Sequential, nn.ModuleList)
    opened one level. Parameters no block re-draws are listed by ``kept_parameters``."""
    def redrawable(module: nn.Module) -> bool:
        return next(module.parameters(), None) is not None and bool(_resettable(module, ""))

    blocks = []
    for name, child in model.named_children():
        if not redrawable(child):
            continue
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            blocks += [f"{name}.{sub}" for sub, part in child.named_children() if redrawable(part)]
        else:
            blocks.append(name)
    return blocks[::-1]


class _DilatedMean(nn.Module):
    """A dilated MaxPool2d made pass-through: the mean over the same dilated window, zeros as padding."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        self.kernel, self.dilation, self.padding = pair(pool.kernel_size), pair(pool.dilation), pair(pool.padding)
        self.stride = pair(pool.stride if pool.stride else pool.kernel_size)

    def forward(self, x):
        weight = x.new_full((x.shape[1], 1, *self.kernel), 1.0 / (self.kernel[0] * self.kernel[1]))
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, groups=x.shape[1])


def linearised_copy(model: nn.Module) -> nn.Module:
    """A copy whose activations are identities and whose max-pools average: gradients then reach every pixel
    a unit is wired to, whatever the input (no dead ReLUs, no max-pool routing)."""
    clone = _private_copy(model)
    for name, module in list(clone.named_modules()):
        replacement = None
        if isinstance(module, ACTIVATIONS):
            replacement = nn.Identity()
        elif isinstance(module, nn.MaxPool2d) and module.dilation in (1, (1, 1)):
            replacement = nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode,
                                       count_include_pad=True)
        elif isinstance(module, nn.MaxPool2d) and not module.ceil_mode:  # AvgPool2d has no dilation
            replacement = _DilatedMean(module)
        if replacement is not None and name:
            parent_name, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent_name) if parent_name else clone, child, replacement)
    return clone
