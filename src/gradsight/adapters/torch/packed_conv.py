"""Forward-only convolutions with weights reordered once for oneDNN, in the private folded copy of a model.

Example:
    >>> pack_convolutions(clone)        # names of the convolutions now packing on first use  # doctest: +SKIP

On CPU, ``F.conv2d`` reorders each weight into oneDNN's blocked layout on every call; for a forward pass that
is a copy of every weight of the network (ResNet50: 100 MB). Without gradients (``predict``: occlusion, the
deletion and insertion curves, Score-CAM) the folded copy instead runs the convolution on a weight reordered
once, with the same oneDNN kernel (the op PyTorch's own inductor uses for frozen CPU graphs): equal to float
rounding, 4-7% sooner (ResNet50 at batch 8: 30.0 -> 28.6 ms an image; EfficientNet-Lite0 at batch 4: 5.7 -> 5.3
ms; medians of interleaved passes). With gradients on, for input that is not float32 channels-last on the CPU,
or where the op is missing or refuses, the plain ``F.conv2d`` runs (with the input gradient of
``phase_grad`` where that applies: a strided convolution of few input channels).

A convolution followed by one of timm's BatchNormAct2d (folded) whose activation is an in-place ReLU6
(EfficientNet-Lite0: all 33; torchvision's Conv-BN-ReLU6 sequences are not fused) also clamps inside the packed
convolution, and the activation then passes that tensor on as it is: one pass over each activation less,
EfficientNet-Lite0 at batch 4 5.8 -> 5.3 ms an image (interleaved medians). oneDNN's clamp turns a NaN into the
lower bound where torch's keeps it; the fold makes no copy of a model with a non-finite weight or statistic.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from .layers import replace_submodule
from .phase_grad import applies as phase_grad_applies
from .phase_grad import conv_with_phase_grad

KEEP_SHAPES = 2  # a call's full batches and its last, partial one; each costs a copy of the weights


def _op_available() -> bool:
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


def _packable_input(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    # Channels-last input only: the op's output is channels-last whatever the input, and F.conv2d's follows the
    # input's layout, which a model's own .view() after a convolution may rely on.
    return (not needs_grad and torch.backends.mkldnn.enabled and x.ndim == 4 and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.layout == torch.strided
            and x.is_contiguous(memory_format=torch.channels_last))


class PackedWeights:
    """One module's reordered weights, by key, the last KEEP_SHAPES of them; ``refused`` once the op refused.

    oneDNN's opaque tensors cannot be copied or pickled, so a copy of the module starts empty and packs again.
    A lock keeps threads that share the folded copy (the explorer's server) from evicting each other's entry.
    """

    def __init__(self):
        self._by_key: dict = {}
        self._lock = threading.Lock()
        self.refused = False

    def __deepcopy__(self, memo):
        return PackedWeights()

    def __reduce__(self):
        return PackedWeights, ()

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key, make) -> torch.Tensor:
        with self._lock:
            weight = self._by_key.get(key)
            if weight is None:
                while len(self._by_key) >= KEEP_SHAPES:
                    self._by_key.pop(next(iter(self._by_key)))
                weight = self._by_key[key] = make()
            return weight

    def refuse(self) -> None:
        with self._lock:
            self._by_key.clear()
            self.refused = True


def convolve(module: PackedConv, x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int],
             packed: PackedWeights, key) -> torch.Tensor:
    """``F.conv2d(x, weight, module.bias, ..., padding)``; without gradients on a weight reordered once and kept
    in ``packed`` under ``key`` and the input's shape (plain convolutions once the op has refused), and then
    clamped too where ``module.fused_clamp()`` names the activation that follows."""
    if not packed.refused and _packable_input(x, weight, module.bias):
        stride, dilation = list(module.stride), list(module.dilation)
        # The layout oneDNN picks depends on the input's shape (packed for batch 1, ResNet50 ran 16% slower at
        # batch 8 than unpacked), so each shape gets its own.
        then = module.fused_clamp()
        try:
            reordered = packed.get((key, tuple(x.shape)), lambda: torch._C._nn.mkldnn_reorder_conv2d_weight(
                weight.detach().to_mkldnn(), list(padding), stride, dilation, module.groups, list(x.shape)))
            attr, scalars = ("hardtanh", [then.min_val, then.max_val]) if then is not None else ("none", [])
            out = torch.ops.mkldnn._convolution_pointwise(x, reordered, module.bias, list(padding), stride,
                                                          dilation, module.groups, attr, scalars, "")
        except (RuntimeError, NotImplementedError, AttributeError):  # this build's op refuses
            if then is not None:  # perhaps only the clamp: without it from now on
                module.fuse_clamp(None, None)
                return convolve(module, x, weight, padding, packed, key)
            packed.refuse()  # plain from now on
        else:
            if then is not None:
                then.skip_once(out)
            return out
    if phase_grad_applies(module, x, weight, module.bias):
        return conv_with_phase_grad(module, x, weight, padding, key)
    return F.conv2d(x, weight, module.bias, module.stride, padding, module.dilation, module.groups)


class PackedConv(nn.Conv2d):
    """An ``nn.Conv2d`` (zero padding given as numbers) that packs its weight for passes without gradients;
    same parameters under the same names. ``padding`` overrides the one of ``conv`` (same_padding passes 0)."""

    def __init__(self, conv: nn.Conv2d, padding=None):
        # Made on the meta device: a real one would draw initial weights from the user's random generator.
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding if padding is None else padding, conv.dilation, conv.groups,
                         conv.bias is not None, device="meta", dtype=conv.weight.dtype)
        self.weight, self.bias = conv.weight, conv.bias
        # The folded copy's weights are private and never change (a change to the user's model builds a new
        # copy), so one packed weight serves every later pass.
        self._packed = PackedWeights()
        self._then: tuple[nn.Module, nn.Module] | None = None  # a tuple: not registered as submodules
        self._phase_kernels: dict = {}  # phase_grad's kernels: the input gradient of a first convolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convolve(self, x, self.weight, self.padding, self._packed, "weight")

    def fuse_clamp(self, chain: nn.Module | None, clamp: nn.Module | None) -> None:
        """Clamp inside the packed convolution (oneDNN's post-op) when this convolution's output goes straight
        into ``chain`` (what timm's BatchNormAct2d leaves once folded: an identity ``drop``, then ``clamp``, an
        ``InplaceClamp``), which then leaves that one tensor as it is (``skip_once``). None: no longer."""
        self._then = None if chain is None else (chain, clamp)

    def fused_clamp(self) -> nn.Module | None:
        """The clamp to fuse in this pass, or None where a hook could see the difference: one reading this
        convolution's output, or the chain's input, would see clamped values."""
        if self._then is None:
            return None
        chain, clamp = self._then
        watched = (self._forward_hooks, chain._forward_pre_hooks, chain.drop._forward_pre_hooks,
                   chain.drop._forward_hooks, clamp._forward_pre_hooks,
                   getattr(nn.modules.module, "_global_forward_hooks", None),
                   getattr(nn.modules.module, "_global_forward_pre_hooks", None))
        return None if any(watched) else clamp


def _packable_conv(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and "forward" not in module.__dict__ and module.padding_mode == "zeros"
            and not isinstance(module.padding, str) and not module._forward_hooks
            and not module._forward_pre_hooks)


def pack_convolutions(root: nn.Module) -> list[str]:
    """Replace every plain ``nn.Conv2d`` under ``root`` by a ``PackedConv``; returns their names."""
    if not _op_available():
        return []
    swapped = [name for name, module in root.named_modules() if name and _packable_conv(module)]
    for name in swapped:
        replace_submodule(root, name, PackedConv(root.get_submodule(name)))
    return swapped
