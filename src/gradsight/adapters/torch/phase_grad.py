"""The input gradient of a strided convolution with few input channels (a network's first convolution, which
reads the image), as one stride-1 convolution and a pixel shuffle, in the private folded copy of a model.

Example:
    >>> out = conv_with_phase_grad(conv, x, weight, padding)      # F.conv2d's output  # doctest: +SKIP

oneDNN computes the input gradient of ResNet50's first convolution (3 input channels, 7x7, stride 2) at a
fraction of its speed elsewhere: its output has only 3 channels. The gradient splits by the phase of the
input position instead. The forward pass reads ``x[s*o + k - p]`` with tap ``w[k]``, so input position
``i = s*m + r`` receives ``g[o] * w[k]`` for every ``o = m - t`` with ``k = s*t + r + p`` in range. For each
phase ``r`` that is a correlation of ``g`` with the taps ``w[s*t + r + p]``, ``t`` from ``t_max`` down to
``t_min``, so all ``s*s`` phases of all input channels are one stride-1 convolution of ``g`` with ``C*s*s``
output channels, and ``pixel_shuffle(s)`` interleaves them back into place. Exact in exact arithmetic (float64:
within 2e-14 of ``convolution_backward`` over kernel sizes 1-7, strides 2-4, paddings 0-3, odd and even
sizes); float32 differs by rounding. ResNet50's stem at batch 8: 38.9 -> 18.1 ms for its input gradient.
The gradient is differentiable once: ``create_graph=True`` through it raises (nothing in gradsight asks for a
second derivative), and ``torch.func`` transforms take the plain convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

NARROW = 4  # input channels up to which the split pays (images: 1, 3 or 4)


def applies(module: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the input gradient of this call is worth splitting and nothing else needs one."""
    return (torch.is_grad_enabled() and x.requires_grad and not weight.requires_grad
            and (bias is None or not bias.requires_grad) and x.ndim == 4 and x.shape[1] <= NARROW
            and module.groups == 1 and module.dilation == (1, 1) and module.stride[0] == module.stride[1] > 1
            and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dtype == weight.dtype
            and not torch._C._functorch.is_functorch_wrapped_tensor(x))  # torch.func: no setup_context here


def _taps(size: int, stride: int, pad: int) -> tuple[int, int]:
    """(t_min, t_max): the offsets ``t = m - o`` between an input position's phase index and the outputs it
    feeds, over all phases ``r``: ``0 <= s*t + r + p <= size - 1`` with ``0 <= r < s``."""
    return -((stride - 1 + pad) // stride), (size - 1 - pad) // stride


def phase_kernel(weight: torch.Tensor, stride: int, padding: tuple[int, int]) -> torch.Tensor:
    """``weight`` (O, C, KH, KW) as the (C*s*s, O, A_h, A_w) kernel of the phase split; channel ``(c, ry, rx)``
    as ``pixel_shuffle`` reads it, tap ``a`` holding ``w[s*(t_max - a) + r + p]`` (zero where out of range)."""
    out_ch, in_ch, kh, kw = weight.shape
    (h_min, h_max), (w_min, w_max) = _taps(kh, stride, padding[0]), _taps(kw, stride, padding[1])
    kernel = weight.new_zeros(in_ch, stride, stride, out_ch, h_max - h_min + 1, w_max - w_min + 1)
    for ry in range(stride):
        for a in range(kernel.shape[-2]):
            ky = stride * (h_max - a) + ry + padding[0]
            if not 0 <= ky < kh:
                continue
            for rx in range(stride):
                for b in range(kernel.shape[-1]):
                    kx = stride * (w_max - b) + rx + padding[1]
                    if 0 <= kx < kw:
                        kernel[:, ry, rx, :, a, b] = weight[:, :, ky, kx].t()
    return kernel.reshape(in_ch * stride * stride, out_ch, *kernel.shape[-2:])


def input_grad(grad: torch.Tensor, kernel: torch.Tensor, stride: int, padding: tuple[int, int],
               weight_size: tuple[int, int], in_size: tuple[int, int]) -> torch.Tensor:
    """The input gradient from ``grad`` (N, O, OH, OW) and ``kernel = phase_kernel(...)``."""
    pads, starts = [], []
    for k, p, out, size in zip(weight_size, padding, grad.shape[-2:], in_size):
        t_min, t_max = _taps(k, stride, p)
        taps = t_max - t_min + 1
        rows = -(-size // stride)  # phase indices m that hold an input position
        # Row m reads grad[m - t_max + a]: pad at least t_max before, and enough after for the last m.
        pad = max(t_max, rows - t_max - out + taps - 1, 0)
        pads.append(pad)
        starts.append((pad - t_max, rows))
    (y0, rows), (x0, cols) = starts
    split = F.conv2d(grad, kernel, padding=tuple(pads))[:, :, y0:y0 + rows, x0:x0 + cols]
    return F.pixel_shuffle(split, stride)[:, :, :in_size[0], :in_size[1]]


class _PhaseGradConv(torch.autograd.Function):
    """``F.conv2d`` whose backward pass gives the input gradient by the phase split (and nothing else: the
    folded copy's weights need none)."""

    @staticmethod
    def forward(ctx, x, weight, bias, module, padding, key):
        ctx.module, ctx.padding, ctx.key = module, padding, (key, padding)
        ctx.weight, ctx.in_size = weight, tuple(x.shape[-2:])  # the folded copy's own, never changed
        return F.conv2d(x, weight, bias, module.stride, padding, module.dilation, module.groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        module, weight, padding = ctx.module, ctx.weight, ctx.padding
        stride = module.stride[0]
        kernel = module._phase_kernels.get(ctx.key)
        if kernel is None or kernel.dtype != grad.dtype:
            kernel = phase_kernel(weight.detach().to(grad.dtype), stride, padding)
            module._phase_kernels[ctx.key] = kernel = kernel.contiguous(memory_format=torch.channels_last)
        return (input_grad(grad, kernel, stride, padding, tuple(weight.shape[-2:]), ctx.in_size),
                None, None, None, None, None)


def conv_with_phase_grad(module: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int],
                         key) -> torch.Tensor:
    """``F.conv2d(x, weight, module.bias, module.stride, padding, ...)`` with the phase-split input gradient;
    ``module._phase_kernels`` (a dict) keeps each kernel under ``key`` (which of the module's weights: they
    never change in the folded copy) and the padding."""
    return _PhaseGradConv.apply(x, weight, module.bias, module, tuple(padding), key)
