"""The fast path of PyTorch gradients: a private copy of the model with BatchNorm folded into the convolutions,
cached per model and used only while the model is exactly as it was when the copy was built.

Example:
    >>> runner = folded_copy(model, probe)          # None when folding does not apply  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import sys
import warnings
import weakref

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .inplace_clamp import InplaceClamp, restore_clamps, swap_inplace_clamps
from .layers import replace_submodule
from .packed_conv import PackedConv, pack_convolutions
from .same_padding import unpad_same_convs
from .two_streams import stateless

# ---------------------------------------------------------------------------------------------------------
# Fast path: a private copy with BatchNorm folded into the preceding convolution and no parameter gradients.
# Eval-mode BatchNorm is an affine map per channel, so conv->BN equals one conv with rescaled weights; this
# removes a forward and a backward elementwise pass per BatchNorm. The copy is cached per model and used only
# while the model is exactly as it was when the copy was built (``model_signature``), and checked against the
# model itself when it is built.

_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
# What every nn.Module keeps in its __dict__ (flags, registries, hook dicts): parameters, buffers, submodules
# and hooks are read separately, ``training`` is set by eval_mode anyway.
_INTERNALS = frozenset(nn.Module().__dict__)
_OPAQUE = object()
_SCALARS = frozenset({bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device,
                      torch.memory_format})


def _plain(value, depth: int = 0):
    """A comparable stand-in for an attribute: scalars and strings with their type (True == 1, but a flag is
    not a size), tuples and lists of them, callables by identity (a weak reference when possible, so the
    cache keeps no user object alive and a new function at a freed one's address is not taken for it);
    _OPAQUE for anything else."""
    kind = type(value)
    if kind in _SCALARS:
        return (kind, value)
    if isinstance(value, (tuple, list)) and depth < 3:
        if all(type(v) in _SCALARS for v in value):  # sizes, strides, paddings: no recursion needed
            return (kind, tuple(value))
        return (kind, tuple(_plain(v, depth + 1) for v in value))
    if callable(value) and not isinstance(value, nn.Module):
        try:
            return weakref.ref(value)
        except TypeError:  # builtins that cannot be weakly referenced live as long as the interpreter
            return value
    return _OPAQUE


def _meta(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.dtype, t.device


def model_signature(model: nn.Module, hooks: bool = True) -> tuple[tuple, list[torch.Tensor], bool]:
    """(structure, tensors, hooked) in one walk over the modules.

    ``structure`` is everything but tensor values that decides what the model computes: every module's name
    and exact type, its public and private plain attributes (eps, stride, padding, inplace, ...; a ``forward``
    set on the instance, by identity), the names, shapes, dtypes and devices of its parameters, buffers and
    tensor attributes, and (with ``hooks``) its hooks. ``tensors`` are those tensors, in a fixed order, for an
    exact comparison of values (an edit through ``.data`` bypasses the version counters). ``hooked``: any hooks.
    """
    structure, tensors, hooked = [], [], False
    for name, module in model.named_modules():
        attrs, metas = [], []
        for key, value in module.__dict__.items():
            if key in _INTERNALS:
                continue
            kind = type(value)
            if kind in _SCALARS:  # most attributes: the fast path of _plain
                attrs.append((key, kind, value))
            elif isinstance(value, torch.Tensor):
                tensors.append(value)
                metas.append((key, _meta(value)))
            else:
                plain = _plain(value)
                if plain is not _OPAQUE:
                    attrs.append((key, plain))
        for group in (module._parameters, module._buffers):
            for key, t in group.items():
                metas.append((key, None if t is None else _meta(t)))
                if t is not None:
                    tensors.append(t)
        entry = (name, type(module), tuple(attrs), tuple(metas))
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or \
                module._backward_pre_hooks:
            hooked = True
            if hooks:
                entry += tuple(tuple(_plain(h) for h in getattr(module, n).values()) for n in _HOOKS)
        structure.append(entry)
    return tuple(structure), tensors, hooked


def structure_key(model: nn.Module) -> tuple:
    """What decides a model's geometry: ``model_signature`` without tensor values and hooks (hooks that record
    activations are common, hooks that change a geometry are not; the trace does not run them)."""
    return model_signature(model, hooks=False)[0]


def _load_memcmp():
    # libc's memcmp compares two CPU tensors' bytes about twice as fast as torch.equal (ResNet50's 25.6 M
    # values: 9 ms vs 16 ms on the benchmark machine), and bitwise: a NaN equals itself.
    try:
        import ctypes
        import ctypes.util

        library = ctypes.CDLL(None) if sys.platform != "win32" else ctypes.cdll.msvcrt
        memcmp = library.memcmp
        memcmp.restype, memcmp.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        return memcmp
    except (OSError, AttributeError):
        return None


_MEMCMP = _load_memcmp()


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _equal(now: torch.Tensor, saved: torch.Tensor) -> bool:
    if now.shape != saved.shape or now.dtype != saved.dtype or now.device != saved.device:
        return False
    if (_MEMCMP is not None and now.device.type == "cpu" and now.layout == torch.strided
            and now.stride() == saved.stride() and _dense(now)):
        size = now.numel() * now.element_size()
        return size == 0 or _MEMCMP(now.data_ptr(), saved.data_ptr(), size) == 0
    try:
        return bool(torch.equal(now, saved))
    except Exception:  # a tensor type torch.equal does not handle: take it as changed
        return False


def same_values(now: list[torch.Tensor], saved: list[torch.Tensor]) -> bool:
    """Whether every tensor in ``now`` holds exactly the values saved (``snapshot``) when a cache was built."""
    return len(now) == len(saved) and all(_equal(a, b) for a, b in zip(now, saved))


def snapshot(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.detach().clone() for t in tensors]


# id(model) -> (model, {question: answer}) while ``unchanged_during`` blocks are open; None outside them.
_ANSWERED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("gradsight_folded_answers", default=None)


@contextlib.contextmanager
def unchanged_during(model: nn.Module):
    """A block in which ``model`` is taken as fixed: what is found out about it once (``folded_copy``'s check,
    whether ``predict`` must watch for a functional softmax) is the answer for the rest of the block.

    Example:
        >>> with unchanged_during(net):            # one gradsight call, its batches back to back  # doctest: +SKIP
        ...     for batch in batches: score_gradient(net, batch, targets)                       # doctest: +SKIP

    For one call whose batches run with none of the user's code in between: the exact check reads every
    weight (16 ms on ResNet50), which a SmoothGrad of 50 samples in batches of 8 would otherwise pay 7 times.
    Between calls, every change to the model is still seen.
    """
    answers = dict(_ANSWERED.get() or {})
    answers.pop(id(model), None)  # checked afresh when the block opens
    token = _ANSWERED.set(answers)
    try:
        yield
    finally:
        _ANSWERED.reset(token)


def block_answers(model: nn.Module) -> dict | None:
    """``model``'s answers in the open ``unchanged_during`` block, to read and fill; None outside a block."""
    answers = _ANSWERED.get()
    if answers is None:
        return None
    entry = answers.get(id(model))
    if entry is None or entry[0] is not model:
        entry = answers[id(model)] = (model, {})
    return entry[1]


def folded_copy(model: nn.Module, probe: torch.Tensor) -> nn.Module | None:
    """The cached folded copy of ``model``, or None when folding does not apply or does not check out.

    The copy is reused only while the model's structure (``model_signature``) and every parameter, buffer and
    tensor attribute are exactly as when it was built; any change rebuilds it. Inside ``unchanged_during``
    the check runs once per block.
    """
    memo = block_answers(model)
    if memo is not None and "folded" in memo:
        return memo["folded"]
    folded = _checked_folded_copy(model, probe)
    if memo is not None:
        memo["folded"] = folded
    return folded


def _checked_folded_copy(model: nn.Module, probe: torch.Tensor) -> nn.Module | None:
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return None  # nothing to fold, whatever the values (and a quicker test than the signature)
    structure, tensors, hooked = model_signature(model)
    if hooked:  # the user's hooks must see the user's modules
        return None
    cached = _FOLDED.get(model)
    if cached is not None and cached[0] == structure and same_values(tensors, cached[1]):
        return cached[2]
    saved = snapshot(tensors)
    folded = fold_batchnorm(model, probe)
    _FOLDED[model] = (structure, saved, folded)
    return folded


def _bn_replacement(bn: nn.Module) -> nn.Module | None:
    if "forward" in bn.__dict__:  # a forward set on the instance: not what BatchNorm computes
        return None
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
    """A copy of ``model`` (eval mode) with each Conv2d->BatchNorm2d pair folded, or None if none applies;
    timm's 'SAME'-padded convolutions in it pad inside the convolution (``same_padding``), its
    convolutions reorder their weights once for passes without gradients (``packed_conv``), and its in-place
    ReLU6s clamp without copying their input first (``inplace_clamp``), inside the convolution before them
    when there are no gradients.

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
        if isinstance(module, nn.Conv2d) and "forward" not in module.__dict__:
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
        with torch.no_grad():  # each run gets its own probe: a model whose first operation is in place edits it
            reference = model(probe.clone())
            clone(probe.clone())
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
        replace_submodule(clone, conv_name, _fold_pair(conv, bn))
        replace_submodule(clone, bn_name, _bn_replacement(bn))
    unpad_same_convs(clone)
    pack_convolutions(clone)
    _channels_last_kernels(clone)
    swap_inplace_clamps(clone)
    _fuse_clamps(clone, pairs)
    for p in clone.parameters():
        p.requires_grad_(False)
    clone.gradsight_softmaxes = tuple(m for m in clone.modules() if isinstance(m, nn.Softmax))  # gradients.py
    clone.gradsight_stateless = stateless(clone)  # gradients.predict: two streams may share it
    if not isinstance(reference, torch.Tensor) or not bool(torch.isfinite(reference).all()):
        return None
    if not all(bool(torch.isfinite(t).all()) for t in (*clone.parameters(), *clone.buffers()) if t.is_floating_point()):
        return None  # a fused clamp would turn a NaN into a number (packed_conv); the plain path reports it
    outputs = _both_paths(clone, probe)
    if outputs is None and restore_clamps(clone):  # an in-place edit after a swapped clamp: torch's modules back
        _fuse_clamps(clone, pairs)  # (none is fused now: no chain ends in a swapped clamp)
        outputs = _both_paths(clone, probe)
    if outputs is None:  # a copy that does not run simply leaves the plain path
        return None
    tolerance = 1e-3 * float(reference.abs().max()) + 1e-5
    for folded in outputs:
        # "not <=": a NaN in the copy's outputs is a difference too
        if folded.shape != reference.shape or not bool(((folded - reference).abs() <= tolerance).all()):
            warnings.warn("gradsight: the fast copy of this model (BatchNorm folded, convolutions padded and packed, "
                          "ReLU6 in place) changed its outputs; using the plain path (pass fast=False to skip the "
                          "check).", RuntimeWarning, stacklevel=4)
            return None
    return clone


def _channels_last_kernels(clone: nn.Module) -> None:
    """Keep the copy's spatial kernels in channels-last order, the one of the activations: with gradients on,
    oneDNN otherwise copies each into that order in every pass, forward and backward (ResNet50 at batch 8:
    75.2 -> 73.3 ms an image forward and backward, outputs and gradients bit-identical)."""
    for module in clone.modules():
        if isinstance(module, PackedConv) and module.weight.ndim == 4 and module.kernel_size != (1, 1):
            module.weight = nn.Parameter(module.weight.detach().contiguous(memory_format=torch.channels_last),
                                         requires_grad=False)


def _fuse_clamps(clone: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Each folded pair whose BatchNormAct2d ends in a swapped ReLU6 clamps inside the convolution; every other
    packed convolution does not."""
    fused = {}
    for conv_name, bn_name in pairs:
        conv, chain = clone.get_submodule(conv_name), clone.get_submodule(bn_name)
        if (isinstance(conv, PackedConv) and isinstance(chain, _DropAct) and type(chain.drop) is nn.Identity
                and isinstance(chain.act, InplaceClamp)):
            fused[conv_name] = chain
    for name, module in clone.named_modules():
        if isinstance(module, PackedConv):
            chain = fused.get(name)
            module.fuse_clamp(chain, None if chain is None else chain.act)


def _both_paths(clone: nn.Module, probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The copy's outputs on ``probe`` without gradients (packed convolutions for channels-last input, as predict
    gives it) and with them (plain ones, and a backward pass: an in-place edit of a tensor the copy keeps for it
    fails there, not in a user's call); None where either fails."""
    try:
        with torch.no_grad():
            forward_only = clone(probe.clone(memory_format=torch.channels_last) if probe.ndim == 4 else probe.clone())
        with torch.enable_grad():
            leaf = probe.clone().requires_grad_(True)
            with_grad = clone(leaf)
            if isinstance(with_grad, torch.Tensor) and with_grad.requires_grad:
                torch.autograd.grad(with_grad.sum(), leaf, allow_unused=True)
    except Exception:
        return None
    if not isinstance(forward_only, torch.Tensor) or not isinstance(with_grad, torch.Tensor):
        return None
    return forward_only, with_grad.detach()


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


