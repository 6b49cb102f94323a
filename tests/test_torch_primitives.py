"""PyTorch primitives of the attribution family, against closed forms and hand-written autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from gradsight.adapters.torch.adapter import TorchAdapter
from gradsight.adapters.torch.gradients import layer_gradient, predict
from gradsight.adapters.torch.modifiers import modified_copy
from gradsight.errors import BadInputError


def one_hidden_layer(w: np.ndarray, v: np.ndarray, activation: nn.Module) -> nn.Module:
    """f(x) = V act(W x) on a 1x1 'image' of len(x) channels: W is (m, n), V is (K, m)."""
    net = nn.Sequential(nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False), activation,
                        nn.Conv2d(w.shape[0], v.shape[0], 1, bias=False), nn.Flatten())
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(w)[:, :, None, None])
        net[2].weight.copy_(torch.from_numpy(v)[:, :, None, None])
    return net.eval()


def input_gradient(model, x: np.ndarray, target: int) -> np.ndarray:
    return TorchAdapter().score_gradient(model, x, [target], "logit", fast=False).gradient


@pytest.fixture
def problem():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 4)).astype(np.float32)
    v = rng.normal(size=(2, 6)).astype(np.float32)
    x = rng.normal(size=(1, 1, 1, 4)).astype(np.float32) * 2
    return w, v, x


def test_guided_and_deconvnet_follow_springenberg_on_v_relu_wx(problem):
    w, v, x = problem
    net = one_hidden_layer(w, v, nn.ReLU())
    pre = w @ x[0, 0, 0]
    on = (pre > 0).astype(np.float32)
    for c in range(2):
        plain = w.T @ (on * v[c])                      # the true gradient
        guided = w.T @ (on * np.maximum(v[c], 0))      # forward mask and positive gradients only
        deconv = w.T @ np.maximum(v[c], 0)             # positive gradients only, no forward mask
        np.testing.assert_allclose(input_gradient(net, x, c)[0, 0, 0], plain, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(input_gradient(modified_copy(net, "guided"), x, c)[0, 0, 0], guided,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(input_gradient(modified_copy(net, "deconvnet"), x, c)[0, 0, 0], deconv,
                                   rtol=1e-5, atol=1e-6)


def test_relu6_and_leaky_relu_rules(problem):
    w, v, x = problem
    x = x * 3  # some pre-activations above 6
    pre = w @ x[0, 0, 0]
    assert (pre > 6).any() and (pre < 0).any()
    relu6 = one_hidden_layer(w, v, nn.ReLU6())
    window = ((pre > 0) & (pre < 6)).astype(np.float32)
    np.testing.assert_allclose(input_gradient(modified_copy(relu6, "guided"), x, 0)[0, 0, 0],
                               w.T @ (window * np.maximum(v[0], 0)), rtol=1e-5, atol=1e-6)
    slope = 0.1
    leaky = one_hidden_layer(w, v, nn.LeakyReLU(slope))
    local = np.where(pre > 0, 1.0, slope)
    np.testing.assert_allclose(input_gradient(modified_copy(leaky, "guided"), x, 1)[0, 0, 0],
                               w.T @ (local * np.maximum(v[1], 0)), rtol=1e-5, atol=1e-6)
    leaky_of_v = np.where(v[1] > 0, v[1], slope * v[1])
    np.testing.assert_allclose(input_gradient(modified_copy(leaky, "deconvnet"), x, 1)[0, 0, 0],
                               w.T @ leaky_of_v, rtol=1e-5, atol=1e-6)


def test_in_place_and_reused_relus_equal_an_unrolled_network():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()  # BasicBlock calls its one self.relu twice, in place
    unrolled = modified_copy(net, "guided")
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)

    # Oracle: the same network where every ReLU call site gets its own guided function, written by hand.
    class Guided(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            ctx.save_for_backward(t)
            return t.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (t,) = ctx.saved_tensors
            return (t > 0).to(g.dtype) * g.clamp(min=0)

    def block(b, t):
        out = Guided.apply(b.bn1(b.conv1(t)))
        out = b.bn2(b.conv2(out))
        return Guided.apply(out + (b.downsample(t) if b.downsample is not None else t))

    def forward(t):
        t = net.maxpool(Guided.apply(net.bn1(net.conv1(t))))
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            for b in stage:
                t = block(b, t)
        return net.fc(torch.flatten(net.avgpool(t), 1))

    xt = torch.from_numpy(x).permute(0, 3, 1, 2).clone().requires_grad_(True)
    with torch.enable_grad():
        (expected,) = torch.autograd.grad(forward(xt)[:, 3].sum(), xt)
    got = TorchAdapter().score_gradient(unrolled, x, [3, 3], "logit", fast=False).gradient
    np.testing.assert_allclose(got, expected.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-6)
    assert all(type(m) is not nn.ReLU for m in unrolled.modules())
    assert sum(type(m) is nn.ReLU for m in net.modules()) > 0  # the user's model keeps its ReLUs


def test_functional_and_smooth_activations_are_refused_by_name():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.head = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.relu(self.act(self.conv(x))).mean((2, 3)))

    probe = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(BadInputError, match="functions in forward.*relu"):
        modified_copy(Functional(), "guided", probe=probe)

    class Clamped(Functional):  # ReLUs written as a clamp at 0 or a maximum with 0: refused too
        def __init__(self, relu):
            super().__init__()
            self.relu = relu

        def forward(self, x):
            return self.head(self.relu(self.act(self.conv(x))).mean((2, 3)))

    disguises = [("clamp", lambda t: t.clamp(min=0)), ("clamp_min", lambda t: torch.clamp_min(t, 0.0)),
                 ("clamp", lambda t: torch.clamp(t, 0, 6)), ("maximum", lambda t: torch.maximum(t, torch.zeros(()))),
                 ("gt", lambda t: torch.where(t > 0, t, 0.0)), ("gt", lambda t: t * (t > 0)),
                 ("_prelu_kernel", lambda t: torch.nn.functional.prelu(t, torch.full((1,), 0.1)))]
    for op, relu in disguises:
        with pytest.raises(BadInputError, match=f"functions in forward.*{op}"):
            modified_copy(Clamped(relu), "deconvnet", probe=probe)
    for module in (nn.PReLU(4), nn.RReLU()):  # no guided or deconvnet rule exists for them
        with pytest.raises(BadInputError, match=f"{type(module).__name__}, which has no guided rule"):
            modified_copy(Clamped(module), "guided", probe=probe)
    # A clamp at another bound, or to [0, 1] (an input range, not a ReLU), is not a ReLU: the copy is made.
    # Nor is a scalar compared with 0 (a predicate), or an integer one (a counter): not what a ReLU gates.
    for other in (lambda t: t.clamp(min=-1.0), lambda t: t.clamp(0.0, 1.0),
                  lambda t: t * 2.0 if t.mean() > 0 else t, lambda t: t * (t.sum() > 0),
                  lambda t: t + torch.maximum(t.amax(), torch.zeros(())), lambda t: t * t.mean().clamp(min=0),
                  lambda t: t * (torch.arange(t.shape[1]) > 0).float()[None, :, None, None]):
        assert modified_copy(Clamped(other), "guided", probe=probe) is not None
    smooth = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(BadInputError, match="SiLU"):
        modified_copy(smooth, "guided")
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(BadInputError, match="no ReLU"):
        modified_copy(plain, "deconvnet")


def test_predict_equals_the_model_in_chunks(cnn):
    x = np.random.default_rng(1).normal(size=(7, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = cnn(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(predict(cnn, x, batch_size=3), expected, rtol=1e-5, atol=1e-5)


def test_layer_gradient_equals_hand_written_autograd(cnn):
    x = np.random.default_rng(2).normal(size=(3, 32, 32, 3)).astype(np.float32)
    out = layer_gradient(cnn, "5", x, [1, None, 4])  # the second ReLU
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.enable_grad():
        a = cnn[:6](xt).detach().requires_grad_(True)
        logits = cnn[6:](a)
        targets = [1, int(logits[1].argmax()), 4]
        (g,) = torch.autograd.grad(logits[torch.arange(3), targets].sum(), a)
    np.testing.assert_allclose(out.activations, a.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.gradient, g.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-7)
    assert list(out.targets) == targets
    with pytest.raises(BadInputError, match="spatial feature map"):
        layer_gradient(cnn, "12", x, [None] * 3)


def test_reinit_redraws_exactly_the_named_layers_reproducibly(cnn):
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    a = modified_copy(cnn, "reinit", layers=["7", "8"], seed=5)
    b = modified_copy(cnn, "reinit", layers=["7", "8"], seed=5)
    c = modified_copy(cnn, "reinit", layers=["7", "8"], seed=6)
    for key, value in cnn.state_dict().items():
        assert torch.equal(value, before[key])  # the user's model is untouched
        assert torch.equal(a.state_dict()[key], b.state_dict()[key])
        changed = not torch.equal(a.state_dict()[key], value)
        if key.startswith(("7.weight", "7.bias")):
            assert changed and not torch.equal(a.state_dict()[key], c.state_dict()[key])
        elif key.startswith("8.") and key != "8.num_batches_tracked":
            assert changed  # BatchNorm back to its own initial state: weight 1, bias 0, mean 0, var 1
        elif not key.startswith(("7.", "8.")):
            assert not changed
    assert torch.equal(a[8].running_var, torch.ones(16)) and torch.equal(a[8].weight, torch.ones(16))


def test_a_model_that_cannot_be_copied_is_refused_clearly():
    import threading

    class Locked(nn.Sequential):  # a lock among its attributes: copy.deepcopy raises TypeError
        def __init__(self):
            super().__init__(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
            self.lock = threading.Lock()

    model = Locked()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for rule, extra in (("guided", {}), ("deconvnet", {}), ("linearised", {}), ("reinit", {"layers": ["0"]})):
        with pytest.raises(BadInputError, match="a model copy.deepcopy can copy.*TypeError: .*lock"):
            modified_copy(model, rule, **extra)
    # A hook that kept an output with its autograd history: torch refuses to copy that tensor.
    kept = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    kept[0].register_forward_hook(lambda module, args, out: setattr(module, "last", out))
    kept(torch.ones(1, 3, 4, 4))
    with pytest.raises(BadInputError, match=r"RuntimeError: Only Tensors created explicitly by the user.*"
                                            r"\.detach\(\)"):
        modified_copy(kept, "guided")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model(torch.ones(1, 3, 4, 4)).shape == (1, 2)  # still the user's working model
