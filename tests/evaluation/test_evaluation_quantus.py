"""Agreement with Quantus 0.6 where the conventions can be aligned.

Model randomisation (quantus.MPRT). Aligned: the layers (Quantus randomises every module that has
``reset_parameters``, in reverse ``named_modules`` order for "top_down"; we pass that list as ``blocks``), the
cascade and the independent order, the map (Quantus' ``explain_func`` is gradsight's own gradient, so only the
randomisation procedure and the similarity are compared), the similarity (Quantus' default Spearman on
|map| / max|map|, a rank-preserving rescaling of our ``spearman_abs``). Not alignable: the random weights
themselves. Quantus re-seeds torch with ``seed + 1`` before every layer, gradsight draws one stream per block;
so the test model's layers have *deterministic* initialisers (their ``reset_parameters`` writes a fixed
pattern), and both libraries must then produce the same randomised models and the same similarities, step by
step. Quantus copies the model (deepcopy) as we do; the user's model is not touched by either.

Pixel flipping (quantus.PixelFlipping). Aligned: deletion to a constant baseline (``perturb_baseline=0.0``;
its default "black" is the image minimum), the probability (``softmax=True``), the order. Quantus sorts the
attribution per *element* (channel x pixel) while we move whole pixels, so the test gives Quantus the map
repeated over channels with tiny offsets that keep a pixel's channels adjacent in its order, and
``features_in_step = channels x pixels per step``. Quantus' curve starts after the first step (no point for the
intact image) and its AUC is ``np.trapz(curve, dx=1)``, unnormalised; ours has the intact point first and is
normalised to the fraction of pixels: ours = (quantus_auc + (c0 + c1) / 2) / steps, with c the full curve.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from evaluation_models import normal_inputs
from testkit import small_cnn
from torch import nn

import gradsight
from gradsight.evaluation.faithfulness import faithfulness
from gradsight.evaluation.sanity import sanity_check

quantus = pytest.importorskip("quantus")


def _pattern(shape, phase: float) -> torch.Tensor:
    n = math.prod(shape)
    return (0.6 * torch.sin(torch.arange(n, dtype=torch.float64) * 1.37 + phase)).reshape(shape).float()


class PatternConv(nn.Conv2d):
    """A convolution whose own initialiser is deterministic (a fixed pattern per layer)."""

    def __init__(self, *args, phase: float = 0.0, **kwargs):
        self.phase = phase
        super().__init__(*args, **kwargs)

    def reset_parameters(self):
        with torch.no_grad():
            self.weight.copy_(_pattern(self.weight.shape, self.phase) / math.sqrt(self.weight[0].numel()))
            if self.bias is not None:
                self.bias.copy_(_pattern(self.bias.shape, self.phase + 1) * 0.1)


class PatternLinear(nn.Linear):
    def reset_parameters(self):
        with torch.no_grad():
            self.weight.copy_(_pattern(self.weight.shape, 0.3) / math.sqrt(self.in_features))
            self.bias.copy_(_pattern(self.bias.shape, 0.7) * 0.1)


def trained_looking_net(seed: int = 0) -> nn.Module:
    """Conv-BN-ReLU with random 'trained' weights; re-initialising any layer gives a known fixed pattern."""
    net = nn.Sequential(
        PatternConv(3, 8, 3, padding=1, phase=0.1), nn.BatchNorm2d(8), nn.ReLU(),
        PatternConv(8, 8, 3, padding=1, phase=0.2), nn.BatchNorm2d(8), nn.ReLU(),
        PatternConv(8, 8, 3, stride=2, padding=1, phase=0.5), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), PatternLinear(8, 4),
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            for p in module.parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.running_mean.uniform_(-0.3, 0.3, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
    return net.eval()


def _explain(model, inputs, targets, **kwargs):
    x = np.ascontiguousarray(np.asarray(inputs).transpose(0, 2, 3, 1), np.float32)
    return gradsight.attribute(model, x, method="gradient", target=[int(t) for t in targets]).maps[:, None]


@pytest.mark.parametrize(("order", "quantus_order"), [("cascade", "top_down"), ("independent", "independent")])
def test_model_randomisation_agrees_with_quantus_mprt(order, quantus_order):
    net, x = trained_looking_net(), normal_inputs(3, 12, seed=2)
    targets = gradsight.attribute(net, x, method="gradient").targets
    layers = [name for name, m in net.named_modules() if hasattr(m, "reset_parameters")][::-1]
    assert layers == ["10", "6", "4", "3", "1", "0"]
    ours = sanity_check(net, x, methods=["gradient"], order=order, blocks=layers, target=list(targets))
    metric = quantus.MPRT(layer_order=quantus_order, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = metric(model=net, x_batch=x.transpose(0, 3, 1, 2).copy(), y_batch=np.asarray(targets),
                        a_batch=None, explain_func=_explain, channel_first=True, device="cpu")
    # Quantus' "independent" goes bottom-up, its "top_down" top-down; we run our blocks top-down in both.
    assert list(theirs) == ["original", *(layers if order == "cascade" else layers[::-1])]
    for s, layer in enumerate(layers):
        np.testing.assert_allclose(ours.scores["gradient"]["spearman_abs"][s], theirs[layer], atol=1e-6,
                                   err_msg=layer)
    # the comparison has teeth: the similarities move well away from 1 and differ between steps
    final = ours.scores["gradient"]["spearman_abs"][-1]
    assert final.max() < 0.9 and np.ptp(ours.scores["gradient"]["spearman_abs"].mean(axis=1)) > 0.1


def test_deletion_agrees_with_quantus_pixel_flipping():
    net, x = small_cnn(seed=4), normal_inputs(2, 12, seed=6)
    rows, cols, channels = x.shape[1:]
    per_step = 4
    steps = rows * cols // per_step
    ours = faithfulness(net, x, method="gradient", metric="deletion", steps=steps, baseline=0.0)
    maps = gradsight.attribute(net, x, method="gradient").maps.astype(np.float64)
    assert all(len(np.unique(m)) == m.size for m in maps)  # no ties: one order for both libraries
    gap = min(np.diff(np.sort(m.ravel())).min() for m in maps)
    offsets = gap / 4 * (np.arange(channels)[::-1] / channels)  # keeps a pixel's channels together
    a_batch = maps[:, None] + offsets[None, :, None, None]
    metric = quantus.PixelFlipping(features_in_step=per_step * channels, perturb_baseline=0.0, normalise=False,
                                   abs=False, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = np.array(metric(model=net, x_batch=x.transpose(0, 3, 1, 2).copy(), y_batch=ours.targets,
                                 a_batch=a_batch, channel_first=True, softmax=True, device="cpu"))
    assert theirs.shape == (len(x), steps)
    np.testing.assert_allclose(ours.curves[:, 1:], theirs, rtol=1e-5, atol=1e-7)
    quantus_auc = np.trapezoid(theirs, dx=1, axis=1)  # quantus.helpers.utils.calculate_auc: np.trapz(dx=1)
    converted = (quantus_auc + (ours.curves[:, 0] + ours.curves[:, 1]) / 2) / steps
    np.testing.assert_allclose(ours.auc, converted, rtol=1e-5)
    assert np.ptp(ours.curves) > 1e-3  # the curves move
