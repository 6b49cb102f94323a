"""PyTorch side of inner-node gradients: run the model only up to a layer, back-propagate chosen units.

Example:
    >>> from gradsight.adapters.torch_zoo import seed_cnn                         # doctest: +SKIP
    >>> net = seed_cnn()                                                           # doctest: +SKIP
    >>> x = np.random.default_rng(0).random((128, 128, 1), dtype=np.float32)      # doctest: +SKIP
    >>> grads, values = unit_gradients(net, "L6", np.array([[0, 0, 0]]), x)       # doctest: +SKIP
    >>> grads.shape                                                                # doctest: +SKIP
    (1, 128, 128, 1)

Units are (row, col, channel) of the layer's output. Arrays cross in channels-last layout, as for saliency.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import BadInputError, UnknownNameError
from . import avoid_triton_tensorflow_clash
from .torch import eval_mode, folded_copy
from .torch_fields import ROOT

avoid_triton_tensorflow_clash("torch")  # before torch runs anything that imports Triton


class _Reached(Exception):
    """Raised by a forward hook to stop the model once the layer of interest has run."""


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


class _Cropper:
    """Forward hooks that crop the outputs of a crop plan's layers (see gradsight.methods.cone).

    Each crop window is in its tensor's full-size coordinates. The tensor that actually arrives was computed
    from an earlier crop, so it starts at ``start * stride / own stride`` of the last crop applied; a window
    that does not fit inside what arrived is skipped (never wrong, only slower).
    """

    def __init__(self, steps):
        self.steps = steps
        self.reset()

    def reset(self) -> None:
        first = self.steps[0]
        self.start = [a for a, _ in first.window]
        self.stride = list(first.stride)

    def offset(self, stride) -> list[int] | None:
        scaled = [a * s for a, s in zip(self.start, self.stride)]
        if any(v % s for v, s in zip(scaled, stride)):
            return None
        return [v // s for v, s in zip(scaled, stride)]

    def hook(self, step):
        def crop(module, args, out):
            if not isinstance(out, torch.Tensor) or out.ndim != 2 + len(step.window):
                return None
            offset = self.offset(step.stride)
            if offset is None:
                return None
            axes = [1 + a for a in _spatial_axes(step.axes, out.ndim, len(step.window))]
            local = [(a - o, b - o) for (a, b), o in zip(step.window, offset)]
            if any(a < 0 or b > out.shape[d] for (a, b), d in zip(local, axes)):
                return None
            self.start, self.stride = [a for a, _ in step.window], list(step.stride)
            index = [slice(None)] * out.ndim
            for d, (a, b) in zip(axes, local):
                index[d] = slice(a, b)
            return out[tuple(index)]
        return crop


def _spatial_axes(axes, ndim: int, count: int = 2) -> tuple[int, ...]:
    """The spatial axes of a layer output after its batch axis: ``axes`` as the trace found them, or (None)
    the last ``count`` axes (channels first)."""
    return tuple(axes) if axes is not None else tuple(range(ndim - 1 - count, ndim - 1))


def _pick(z: torch.Tensor, units: np.ndarray, axes) -> torch.Tensor:
    """z[i, unit i] for units given as (row, col, channel) rows, whatever the layout of z."""
    rows, cols = (1 + a for a in _spatial_axes(axes, z.ndim))
    channel = next(d for d in range(1, z.ndim) if d not in (rows, cols))
    index: list = [None] * z.ndim
    index[0] = torch.arange(len(units))
    for d, column in ((rows, 0), (cols, 1), (channel, 2)):
        index[d] = torch.as_tensor(units[:, column])
    return z[tuple(index)]


def _check_units(name: str, z: torch.Tensor, units: np.ndarray, axes) -> None:
    """Units in range of the layer's output (when no field report checked them before)."""
    rows, cols = (1 + a for a in _spatial_axes(axes, z.ndim))
    channel = next(d for d in range(1, z.ndim) if d not in (rows, cols))
    sizes = (z.shape[rows], z.shape[cols], z.shape[channel])
    for unit in units:
        if any(not 0 <= int(u) < n for u, n in zip(unit, sizes)):
            raise BadInputError(f"unit of layer {name!r}", expected=f"(x, y, c) in 0..{sizes[0] - 1} x "
                                f"0..{sizes[1] - 1} x 0..{sizes[2] - 1}", got=str(tuple(int(u) for u in unit)))


def unit_gradients(model: nn.Module, layer, units: np.ndarray, inputs: np.ndarray, plans=None,
                   batch_size: int = 32, fast: bool = True, spatial_axes=None) -> tuple[np.ndarray, np.ndarray]:
    """d z[unit] / d input for each (row, col, channel) unit; one input (H, W, C) shared by all units.

    ``plans``: None (every unit on the whole input), or one CropPlan (or None) per unit. A single unit's plan
    may also crop the outputs of earlier layers, so that only what the unit can see is computed; the plans
    of several units are input windows of one size, stacked into batches. Gradients come back
    pasted into full-size zero arrays. ``fast`` runs the BatchNorm-folded copy of the model used for
    saliency (unless the layer is a convolution whose BatchNorm was folded into it, whose output would then
    differ). ``spatial_axes``: the layer output's row and column axes after the batch axis, as the trace
    found them (None: channels first, N x C x H x W).
    """
    name, module = resolve_module(model, layer)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    full = torch.from_numpy(np.ascontiguousarray(inputs)).permute(2, 0, 1).to(device, dtype)
    plans = list(plans) if plans is not None else [None] * len(units)
    windows = [None if p is None else p.input_window for p in plans]
    deeper = plans[0] if len(units) == 1 and plans[0] is not None and len(plans[0].steps) > 1 else None
    grads = np.zeros((len(units), *inputs.shape), dtype=np.float32 if dtype != torch.float64 else np.float64)
    values = np.zeros(len(units))
    handles = []
    with eval_mode(model), torch.enable_grad():
        runner = folded_copy(model, full[None]) if fast else None
        if runner is not None and name not in runner.gradsight_folded_convs:
            model, module = runner, (runner if name == ROOT else runner.get_submodule(name))
        cropper = _Cropper(deeper.steps) if deeper is not None else None
        try:
            for step in deeper.steps[1:] if deeper is not None else ():
                try:
                    target = model.get_submodule(step.layer)
                except AttributeError:  # not in the folded copy: skipping a crop costs time, never accuracy
                    continue
                handles.append(target.register_forward_hook(cropper.hook(step)))
            for start in range(0, len(units), batch_size):
                rows = range(start, min(start + batch_size, len(units)))
                x = torch.stack([_window_of(full, windows[i]) for i in rows]).contiguous(
                    memory_format=torch.channels_last).requires_grad_(True)
                if cropper is not None:
                    cropper.reset()
                z = layer_output(model, module, x.clone())  # a clone: the model's first operation may be in place
                if z.ndim != 4:
                    raise BadInputError(f"layer {name!r}", expected="a feature map (N, channels, rows, cols)",
                                        got=f"output of shape {tuple(z.shape)}", fix="pick a convolutional layer")
                local = np.array([units[i] for i in rows])
                if plans[rows[0]] is None:
                    _check_units(name, z, local, spatial_axes)
                for i, row in enumerate(rows):
                    if cropper is not None:
                        local[i, :2] -= cropper.offset(plans[row].stride)
                    elif plans[row] is not None:
                        local[i, :2] -= plans[row].unit_offset()
                picked = _pick(z, local, spatial_axes)
                (grad,) = torch.autograd.grad(picked.sum(), x)
                block = grad.permute(0, 2, 3, 1).detach().cpu().numpy()
                for i, row in enumerate(rows):
                    grads[(row, *_slices(windows[row], inputs.shape[:2]))] = block[i]
                values[start:start + len(local)] = picked.detach().cpu().numpy()
        finally:
            for handle in handles:
                handle.remove()
    return grads, values


def _slices(window, size) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in size) if window is None else tuple(slice(a, b) for a, b in window)


def _window_of(full: torch.Tensor, window) -> torch.Tensor:
    return full if window is None else full[(slice(None), *_slices(window, None))]


# Modules whose 2-D output is N x C x H x W by definition, and modules that keep their input's layout.
_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                   nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
                   nn.modules.pooling._LPPoolNd, nn.modules.batchnorm._BatchNorm, nn.Upsample, nn.PixelShuffle,
                   nn.PixelUnshuffle, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
                   nn.modules.padding._ConstantPadNd, nn.modules.padding._CircularPadNd)
_KEEPS_LAYOUT = (nn.Identity, nn.Dropout, nn.Dropout2d)


def _channels_first(module: nn.Module) -> bool:
    """Whether the module's output is N x C x H x W whatever precedes it: a convolution, pooling, BatchNorm,
    upsampling or padding module, or a Sequential ending in one (then activations, dropout)."""
    while "forward" not in module.__dict__:
        if isinstance(module, _CHANNELS_FIRST):
            return True
        if not isinstance(module, nn.Sequential):
            return False
        children = [m for m in module if not isinstance(m, _LINEAR_ACTIVATIONS + _KEEPS_LAYOUT)]
        if not children:
            return False
        module = children[-1]
    return False


def untraced_layer(model: nn.Module, layer, inputs: np.ndarray) -> tuple[None, tuple[int, int, int]]:
    """(spatial axes, (rows, cols, channels)) of a layer the trace could not reach, from one run on
    ``inputs`` (H, W, C). Only layers that are channels-first by their type are taken: the output of any
    other module could be N x C x H x W or N x H x W x C, and gradsight does not guess."""
    name, module = resolve_module(model, layer)
    if not _channels_first(module):
        raise BadInputError(f"layer {name!r}", expected="a layer whose output layout is known: the trace stopped "
                            "before it, and its output could be read as (N, C, H, W) or as (N, H, W, C)",
                            got=f"a {type(module).__name__}",
                            fix="pick a convolution, pooling, BatchNorm, upsampling or padding layer (or a block "
                                "ending in one)")
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    x = torch.from_numpy(np.ascontiguousarray(inputs)).permute(2, 0, 1)[None].to(device, dtype)
    with eval_mode(model), torch.no_grad():
        z = layer_output(model, module, x.clone())
    if z.ndim != 4:
        raise BadInputError(f"layer {name!r}", expected="a feature map (N, channels, rows, cols)",
                            got=f"output of shape {tuple(z.shape)}", fix="pick a convolutional layer")
    return None, (z.shape[2], z.shape[3], z.shape[1])


_LINEAR_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                       nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Softplus)


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
    clone = copy.deepcopy(model).eval()
    for name, module in list(clone.named_modules()):
        replacement = None
        if isinstance(module, _LINEAR_ACTIVATIONS):
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


def support_map(model: nn.Module, layer, position: tuple[int, int], inputs: np.ndarray,
                seed: int = 0, spatial_axes=None) -> np.ndarray:
    """Sum over inputs and channels of |d (sum_c w_c z[c, row, col]) / d input| with random w_c > 0.

    ``inputs`` is (K, H, W, C); the result is (H, W). Its non-zero pixels are the measured receptive field.
    ``spatial_axes`` as for :func:`unit_gradients`.
    """
    name, module = resolve_module(model, layer)
    gen = torch.Generator().manual_seed(seed)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.from_numpy(np.ascontiguousarray(inputs)).permute(0, 3, 1, 2).to(dtype).requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        z = layer_output(model, module, x.clone())  # a clone: the model's first operation may be in place
        if z.ndim != 4:
            raise BadInputError(f"layer {name!r}", expected="a feature map (N, channels, rows, cols)",
                                got=f"output of shape {tuple(z.shape)}")
        rows, cols = (1 + a for a in _spatial_axes(spatial_axes, z.ndim))
        z = z.movedim((rows, cols), (2, 3))  # N x C x H x W whatever the layer's layout
        weights = torch.rand(z.shape[1], generator=gen, dtype=z.dtype) + 0.5
        picked = (z[:, :, position[0], position[1]] * weights).sum()
        (grad,) = torch.autograd.grad(picked, x)
    return grad.abs().sum(dim=(0, 1)).detach().cpu().numpy()
