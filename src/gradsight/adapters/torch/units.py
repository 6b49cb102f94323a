"""PyTorch side of inner-node gradients: run the model only up to a layer, back-propagate chosen units.

Example:
    >>> from gradsight.adapters.torch.zoo import seed_cnn                         # doctest: +SKIP
    >>> net = seed_cnn()                                                           # doctest: +SKIP
    >>> x = np.random.default_rng(0).random((128, 128, 1), dtype=np.float32)      # doctest: +SKIP
    >>> grads, values = unit_gradients(net, "L6", np.array([[0, 0, 0]]), x)       # doctest: +SKIP
    >>> grads.shape                                                                # doctest: +SKIP
    (1, 128, 128, 1)

Units are (row, col, channel) of the layer's output. Arrays cross in channels-last layout, as for saliency.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...errors import BadInputError
from ..common import avoid_triton_tensorflow_clash, support_weights
from .folding import folded_copy
from .layers import ACTIVATIONS, ROOT, eval_mode, layer_output, resolve_module

avoid_triton_tensorflow_clash("torch")  # before torch runs anything that imports Triton


class _Cropper:
    """Forward hooks that crop the outputs of a crop plan's layers (see gradsight.receptive.cone).

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
        children = [m for m in module if not isinstance(m, ACTIVATIONS + _KEEPS_LAYOUT)]
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


def support_map(model: nn.Module, layer, position: tuple[int, int], inputs: np.ndarray,
                seed: int = 0, spatial_axes=None) -> np.ndarray:
    """Sum over inputs and channels of |d (sum_c w_c z[c, row, col]) / d input| with random w_c > 0.

    ``inputs`` is (K, H, W, C); the result is (H, W). Its non-zero pixels are the measured receptive field.
    ``spatial_axes`` as for :func:`unit_gradients`.
    """
    name, module = resolve_module(model, layer)
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
        weights = torch.from_numpy(support_weights(z.shape[1], seed)).to(z.device, z.dtype)
        picked = (z[:, :, position[0], position[1]] * weights).sum()
        (grad,) = torch.autograd.grad(picked, x)
    return grad.abs().sum(dim=(0, 1)).detach().cpu().numpy()
