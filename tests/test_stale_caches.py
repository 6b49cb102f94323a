"""Caches never serve a changed model: the BatchNorm-folded copy and the receptive-field report.

Every edit a user can make between two calls — values (also through ``.data``, which bypasses the version
counters), attributes, and swapped modules — must be seen by the next call. The oracle is plain autograd on
the user's own model as it is now.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import small_cnn
from torch import nn

import gradsight


def _mul_data(net):
    net[0].weight.data.mul_(-3)


def _assign_data(net):
    torch.manual_seed(11)
    net[3].weight.data = torch.randn_like(net[3].weight)


def _running_mean_data(net):
    net[1].running_mean.data.add_(1)


def _in_place_no_grad(net):
    with torch.no_grad():
        net[4].running_var.mul_(4.0)


def _eps(net):
    net[4].eps = 10.0


def _stride(net):
    net[7].stride = (2, 2)


def _padding(net):
    net[0].padding = (0, 0)


def _identity(net):
    net[2] = nn.Identity()


def _tanh(net):
    net[5] = nn.Tanh()


def _forward_override(net):
    net[9].forward = lambda x: 2.0 * x.relu()


def _new_parameter(net):
    torch.manual_seed(12)
    net[7].weight = nn.Parameter(torch.randn_like(net[7].weight))


EDITS = {f.__name__[1:]: f for f in (_mul_data, _assign_data, _running_mean_data, _in_place_no_grad, _eps,
                                     _stride, _padding, _identity, _tanh, _forward_override, _new_parameter)}


def _plain_saliency(net: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and d logit[predicted] / d input by hand, on the model as it is."""
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).clone().requires_grad_(True)
    logits = net(xt)
    top = logits.argmax(1)
    (grad,) = torch.autograd.grad(logits.gather(1, top[:, None]).sum(), xt)
    return logits.detach().numpy(), grad.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("edit", list(EDITS))
def test_saliency_fast_path_sees_every_kind_of_edit(edit):
    net = small_cnn(seed=3)
    x = np.random.default_rng(0).standard_normal((2, 24, 24, 3)).astype(np.float32)
    before = gradsight.saliency(net, x)  # builds and caches the folded copy
    EDITS[edit](net)
    logits, grad = _plain_saliency(net, x)
    assert not np.allclose(before.logits, logits, rtol=1e-3, atol=1e-4)  # the edit changed the model
    for fast in (True, False):
        after = gradsight.saliency(net, x, fast=fast)
        np.testing.assert_allclose(after.logits, logits, rtol=1e-4, atol=1e-5, err_msg=f"fast={fast}")
        np.testing.assert_allclose(after.gradient, grad, rtol=1e-4, atol=1e-5 * np.abs(grad).max(),
                                   err_msg=f"fast={fast}")


def _plain_unit(net: nn.Module, layer: str, x: np.ndarray, unit) -> tuple[float, np.ndarray]:
    xt = torch.from_numpy(x).permute(2, 0, 1)[None].clone().requires_grad_(True)
    seen = []
    handle = net.get_submodule(layer).register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        net(xt)
    finally:
        handle.remove()
    z = seen[0][0, unit[2], unit[0], unit[1]]
    (grad,) = torch.autograd.grad(z, xt)
    return float(z.detach()), grad[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("edit", [e for e in EDITS if e != "forward_override"])
def test_node_gradient_sees_every_kind_of_edit(edit):
    net = small_cnn(seed=4)
    x = np.random.default_rng(1).random((24, 24, 3), dtype=np.float32)
    unit = (1, 2, 5)
    gradsight.node_gradient(net, "9", unit, x)  # caches the folded copy and the field report
    EDITS[edit](net)
    value, grad = _plain_unit(net, "9", x, unit)
    for fast in (True, False):
        g = gradsight.node_gradient(net, "9", unit, x, fast=fast)
        assert g.values[0] == pytest.approx(value, rel=1e-4, abs=1e-5), f"fast={fast}"
        np.testing.assert_allclose(g.gradient, grad, rtol=1e-4, atol=1e-5 * max(np.abs(grad).max(), 1e-12),
                                   err_msg=f"fast={fast}")


def test_node_gradient_sees_a_replaced_forward():
    net = small_cnn(seed=4)
    x = np.random.default_rng(1).random((24, 24, 3), dtype=np.float32)
    gradsight.node_gradient(net, "9", (1, 2, 5), x)
    net[8].forward = lambda t: -t  # the BatchNorm before the unit's ReLU now negates
    value, grad = _plain_unit(net, "9", x, (1, 2, 5))
    g = gradsight.node_gradient(net, "9", (1, 2, 5), x)
    assert g.values[0] == pytest.approx(value, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(g.gradient, grad, rtol=1e-5, atol=1e-6 * max(np.abs(grad).max(), 1e-12))


def _three_convs() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1)).eval()


def test_field_report_follows_a_swapped_layer_with_the_same_module_count():
    net = _three_convs()
    before = gradsight.receptive_field(net, (48, 48))
    assert before["4"].size == (1 + 2 + 2 + 2,) * 2 and before["4"].stride == (1, 1)
    net[2] = nn.Conv2d(8, 8, 7, stride=2, padding=3)
    report = gradsight.receptive_field(net, (48, 48))
    # 3x3/1 then 7x7/2 then 3x3/1 at stride 2: r = 1 + 2 + 6 + 2 * 2, S = 2, P = 1 + 3 + 1 * 2
    assert report["4"].size == (1 + 2 + 6 + 2 * 2,) * 2
    assert report["4"].stride == (2, 2) and report["4"].padding == (1 + 3 + 1 * 2,) * 2
    # unit 10 sees rows 10 * 2 - 6 .. 10 * 2 - 6 + 13 - 1 = 14..26, and its gradient says so
    x = np.random.default_rng(0).random((48, 48, 1), dtype=np.float32)
    g = gradsight.node_gradient(net, "4", (10, 10, 0), x, fast=False)
    assert g.rect == ((14, 26), (14, 26))
    value, grad = _plain_unit(net, "4", x, (10, 10, 0))
    np.testing.assert_allclose(g.gradient, grad, rtol=1e-5, atol=1e-6 * np.abs(grad).max())
    assert g.support_box() == g.rect


@pytest.mark.parametrize("change", ["stride", "padding", "dilation", "kernel swap", "pool swap"])
def test_field_report_follows_attribute_changes(change):
    net = _three_convs()
    gradsight.receptive_field(net, (40, 40))
    fresh = _three_convs()
    for model in (net, fresh):
        if change == "stride":
            model[2].stride = (2, 2)
        elif change == "padding":
            model[0].padding = (0, 0)
        elif change == "dilation":
            model[2].dilation, model[2].padding = (2, 2), (2, 2)
        elif change == "kernel swap":
            model[4] = nn.Conv2d(8, 8, 5, padding=2)
        else:
            model[1] = nn.MaxPool2d(3, stride=2, padding=1)
    got = gradsight.receptive_field(net, (40, 40))
    want = gradsight.receptive_field(fresh, (40, 40))
    assert [(f.name, f.kind, f.output_shape, f.field) for f in got.layers] == \
           [(f.name, f.kind, f.output_shape, f.field) for f in want.layers]
