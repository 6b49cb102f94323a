"""PyTorch adapter: input gradients of a class score, leaving the user's model exactly as it was.

Example:
    >>> import numpy as np, torch                                            # doctest: +SKIP
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))  # doctest: +SKIP
    >>> out = TorchAdapter().class_score_gradient(net, np.ones((1, 2, 2, 3), np.float32), [None], "logit")
    >>> out.gradient.shape                                                    # doctest: +SKIP
    (1, 2, 2, 3)

Arrays cross this boundary as NumPy float32 in channels-last layout (N, H, W, C); inside, PyTorch works in
NCHW. The model is run in eval mode (BatchNorm statistics, no dropout) and every module's ``training`` flag is
restored afterwards; only the input's gradient is requested, so no parameter's ``.grad`` is touched. A model
whose output is an ``nn.Softmax`` gives its logits as the softmax's input.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
import weakref

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..errors import BadInputError
from . import avoid_triton_tensorflow_clash
from .base import ScoreGradient, resolve_targets

avoid_triton_tensorflow_clash("torch")  # before torch runs anything that imports Triton


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


def to_input_array(tensor: torch.Tensor) -> np.ndarray:
    """A user's NCHW (or CHW) tensor as a float32 NHWC array; the tensor itself is not touched."""
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4:
        raise BadInputError("input tensor", expected="shape (N, C, H, W) or (C, H, W)",
                            got=f"shape {tuple(tensor.shape)}")
    return tensor.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy().copy()


class TorchAdapter:
    """The PyTorch implementation of what gradsight's methods ask of a framework."""

    name = "torch"

    def resolve_layer(self, model, layer):
        from .torch_units import resolve_module

        return resolve_module(model, layer)

    def unit_gradients(self, model, layer, units, inputs, plans=None, batch_size=32, fast=True):
        from .torch_units import unit_gradients

        return unit_gradients(model, layer, units, inputs, plans, batch_size, fast)

    def support_map(self, model, layer, position, inputs, seed=0):
        from .torch_units import support_map

        return support_map(model, layer, position, inputs, seed)

    def linearised_copy(self, model):
        from .torch_units import linearised_copy

        return linearised_copy(model)

    def trace_fields(self, model, input_shape, name=None):
        from .torch_fields import trace_fields

        return trace_fields(model, input_shape, name)

    def default_input_shape(self, model) -> tuple[int, ...]:
        """(channels, rows, cols): the model's ``gradsight_input_shape`` or its first convolution's channels at 224."""
        shape = getattr(model, "gradsight_input_shape", None)
        if shape is not None:
            return tuple(shape)
        from .torch_fields import _first_conv_channels

        return (_first_conv_channels(model), 224, 224)

    def layer_names(self, model) -> list[str]:
        return [n for n, _ in model.named_modules() if n]

    def class_score_gradient(self, model: nn.Module, inputs: np.ndarray, targets: list[int | None],
                             score: str = "logit", fast: bool = True) -> ScoreGradient:
        """d score[target] / d input for a batch; ``None`` targets become the predicted class."""
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        # NHWC arrays viewed as NCHW are channels-last tensors already; oneDNN convolutions and their backward
        # run faster so (ResNet50, batch 8, 2 cores: ~20% less time than contiguous NCHW, bench/saliency.py).
        x = torch.from_numpy(np.ascontiguousarray(inputs)).permute(0, 3, 1, 2).to(device, dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        with eval_mode(model):
            runner = folded_copy(model, x[:1]) if fast else None
            with torch.enable_grad():
                x = x.clone(memory_format=torch.channels_last).requires_grad_(True)
                logits = _checked_logits(_pre_softmax(runner or model, x), len(inputs))
                chosen = _resolve_targets(targets, logits)
                scores = _select(logits, chosen, score)
                (grad,) = torch.autograd.grad(scores.sum(), x)
        return ScoreGradient(logits.detach().cpu().numpy(), chosen.cpu().numpy(),
                             grad.permute(0, 2, 3, 1).cpu().numpy())


def _pre_softmax(model: nn.Module, x: torch.Tensor):
    """The model's output, or — when that output comes from a final nn.Softmax — the softmax's input (the
    logits: pretrained models often end in a softmax, and its gradient saturates)."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, args, out: seen.append((out, args[0])))
               for m in model.modules() if isinstance(m, nn.Softmax)]
    try:
        out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    for produced, logits in seen:
        if produced is out:
            return logits
    return out


def _checked_logits(out, batch: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise BadInputError("model output", expected="a tensor of class scores (N, classes)",
                            got=type(out).__name__, fix="wrap the model so that forward returns the logits")
    if out.ndim != 2 or out.shape[0] != batch:
        raise BadInputError("model output", expected=f"class scores of shape ({batch}, classes)",
                            got=f"shape {tuple(out.shape)}", fix="pass a classifier (or wrap it to return logits)")
    if not torch.isfinite(out).all():
        raise BadInputError("model output", expected="finite class scores", got="NaN or infinity",
                            fix="check the input values and the model's weights")
    return out


def _resolve_targets(targets: list[int | None], logits: torch.Tensor) -> torch.Tensor:
    chosen = resolve_targets(targets, logits.shape[1], logits.detach().cpu().numpy())
    return torch.tensor(chosen, device=logits.device)


def _select(logits: torch.Tensor, chosen: torch.Tensor, score: str) -> torch.Tensor:
    if score == "prob":
        logits = logits.softmax(dim=1)
    elif score == "logprob":
        logits = logits.log_softmax(dim=1)
    elif score != "logit":
        raise BadInputError("score", expected="'logit', 'prob' or 'logprob'", got=repr(score))
    return logits.gather(1, chosen[:, None])[:, 0]


# ---------------------------------------------------------------------------------------------------------
# Fast path: a private copy with BatchNorm folded into the preceding convolution and no parameter gradients.
# Eval-mode BatchNorm is an affine map per channel, so conv->BN equals one conv with rescaled weights; this
# removes a forward and a backward elementwise pass per BatchNorm. The copy is cached per model and rebuilt
# whenever any parameter or buffer changes (tensor version counters), and checked against the model itself.

_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _fingerprint(model: nn.Module) -> tuple | None:
    """Identity and version of every parameter and buffer, in one walk over the modules; None if any module
    has hooks (the user's hooks must see the user's modules)."""
    key = []
    for module in model.modules():
        if any(getattr(module, n, None) for n in _HOOKS):
            return None
        for group in (module._parameters, module._buffers):
            key.extend((id(t), t._version, t.device) for t in group.values() if t is not None)
    return tuple(key)


def folded_copy(model: nn.Module, probe: torch.Tensor) -> nn.Module | None:
    """The cached folded copy of ``model``, or None when folding does not apply or does not check out."""
    key = _fingerprint(model)
    if key is None:
        return None
    cached = _FOLDED.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    folded = fold_batchnorm(model, probe)
    _FOLDED[model] = (key, folded)
    return folded


def _bn_replacement(bn: nn.Module) -> nn.Module | None:
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    # timm's BatchNormAct2d is BatchNorm2d followed by its own `drop` and `act` submodules.
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act") and hasattr(bn, "drop"):
        return _DropAct(bn.drop, bn.act)
    return None


class _DropAct(nn.Module):
    """What is left of timm's BatchNormAct2d once its BatchNorm is folded; keeps the names ``drop``, ``act``."""

    def __init__(self, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.drop, self.act = drop, act

    def forward(self, x):
        return self.act(self.drop(x))


def fold_batchnorm(model: nn.Module, probe: torch.Tensor) -> nn.Module | None:
    """A copy of ``model`` (eval mode) with each Conv2d->BatchNorm2d pair folded, or None if none applies.

    Pairs are found by running ``probe`` and seeing which BatchNorm receives a convolution's output tensor
    itself. The copy's logits on ``probe`` must match the model's; otherwise None (the plain path is used).
    """
    try:
        clone = copy.deepcopy(model).eval()
    except Exception:  # a model that cannot be copied simply takes the plain path
        return None
    produced: dict[int, tuple[str, torch.Tensor, int]] = {}
    pairs: list[tuple[str, str]] = []
    handles = []
    named = dict(clone.named_modules())
    for name, module in named.items():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(
                lambda mod, args, out, name=name: produced.__setitem__(id(out), (name, out, out._version))))
        elif isinstance(module, nn.BatchNorm2d) and module.track_running_stats and _bn_replacement(module):
            def pre(mod, args, name=name):
                hit = produced.get(id(args[0]))
                # Same object and unmodified: an in-place op (e.g. ReLU) in between would break the algebra.
                if hit is not None and hit[1] is args[0] and hit[2] == args[0]._version:
                    pairs.append((hit[0], name))
            handles.append(module.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            reference = model(probe)
            clone(probe)
    except Exception:  # a model that does not run on this probe simply takes the plain path
        return None
    finally:
        for handle in handles:
            handle.remove()
    conv_uses = [conv for conv, _ in pairs]
    pairs = [(c, b) for c, b in pairs if conv_uses.count(c) == 1]
    if not pairs:
        return None
    clone.gradsight_folded_convs = frozenset(conv for conv, _ in pairs)  # their outputs now include the BN
    for conv_name, bn_name in pairs:
        conv, bn = named[conv_name], named[bn_name]
        _set_submodule(clone, conv_name, _fold_pair(conv, bn))
        _set_submodule(clone, bn_name, _bn_replacement(bn))
    for p in clone.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        folded = clone(probe)
    if not isinstance(reference, torch.Tensor) or folded.shape != reference.shape:
        return None
    tolerance = 1e-3 * float(reference.abs().max()) + 1e-5
    if float((folded - reference).abs().max()) > tolerance:
        warnings.warn("gradsight: BatchNorm folding changed this model's outputs; using the plain gradient "
                      "path (pass fast=False to skip the check).", RuntimeWarning, stacklevel=4)
        return None
    return clone


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by eval-mode bn as one conv; the arithmetic is done in float64, then rounded once.

    Folding in float32 rounds the rescaled weights (gamma / sqrt(var + eps) can be large) and made
    EfficientNet-Lite0 maps differ by up to 6e-3 relative L2 from a float64 reference; in float64 the folded
    model is as close to that reference as the unfolded one (bench/saliency.py prints both).
    """
    as64 = lambda t: None if t is None else t.detach().double()  # noqa: E731
    weight, bias = fuse_conv_bn_weights(as64(conv.weight), as64(conv.bias), as64(bn.running_mean),
                                        as64(bn.running_var), bn.eps, as64(bn.weight), as64(bn.bias))
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter(weight.detach().to(conv.weight.dtype), requires_grad=False)
    fused.bias = nn.Parameter(bias.detach().to(conv.weight.dtype), requires_grad=False)
    return fused


def _set_submodule(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
