"""What a PyTorch model's output is: logits, or probabilities from a softmax in ``forward``.

A final softmax — a module, ``torch.softmax``, ``F.softmax`` or ``Tensor.softmax`` — is stepped over, so the
logit is the softmax's input. When the output rows are probabilities and no softmax could be found, 'logit'
is refused (it would differentiate a probability) and 'prob'/'logprob' differentiate the output / its log.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from testkit import small_cnn
from torch import nn

import gradsight


class Wrapped(nn.Module):
    """The issue's form: a function of the model's output, wrapped in an nn.Module."""

    def __init__(self, fn, inner: nn.Module | None = None):
        super().__init__()
        self.fn, self.inner = fn, inner

    def forward(self, x):
        return self.fn(self.inner(x)) if self.inner is not None else self.fn(x)


ENDINGS = {
    "torch.softmax": lambda z: torch.softmax(z, 1),
    "F.softmax": lambda z: F.softmax(z, dim=1),
    "Tensor.softmax": lambda z: z.softmax(1),
    "Tensor.softmax(dim=-1)": lambda z: z.softmax(dim=-1),
    "F.softmax with temperature": lambda z: F.softmax(z / 2.0, dim=1),
    "nn.Softmax": nn.Softmax(dim=1),
    "torch.log_softmax": lambda z: torch.log_softmax(z, 1),
}


def _autograd(net: nn.Module, x: np.ndarray, score_of) -> tuple[np.ndarray, np.ndarray]:
    """(the model's raw output, d score_of(output)[n, predicted] / d input) by hand."""
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).clone().requires_grad_(True)
    out = net(xt)
    scores = score_of(out)
    top = out.argmax(1)
    (grad,) = torch.autograd.grad(scores.gather(1, top[:, None]).sum(), xt)
    return out.detach().numpy(), grad.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_final_softmax_in_forward_is_stepped_over(ending):
    inner = small_cnn(seed=2)
    net = Wrapped(ENDINGS[ending], inner).eval()
    x = np.random.default_rng(0).standard_normal((3, 20, 20, 3)).astype(np.float32)
    scale = 2.0 if "temperature" in ending else 1.0
    logits, grad = _autograd(inner, x, lambda z: z / scale)  # the softmax's input is z / scale
    for fast in (True, False):
        result = gradsight.saliency(net, x, fast=fast)
        np.testing.assert_allclose(result.logits, logits / scale, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(result.gradient, grad, rtol=1e-4, atol=1e-5 * np.abs(grad).max())
        probs = torch.softmax(torch.from_numpy(logits) / scale, 1).numpy()
        np.testing.assert_allclose(result.probabilities, probs, rtol=1e-4, atol=1e-6)


def test_the_embedded_model_under_a_functional_softmax(embedded, ouzel_path):
    plain = gradsight.saliency(embedded, ouzel_path, fast=False)
    for net in (Wrapped(lambda z: torch.softmax(z, 1), embedded.module),
                Wrapped(lambda x: torch.softmax(embedded.module(x), 1))):  # the model is not even a submodule
        result = gradsight.saliency(net.eval(), ouzel_path, preprocess=embedded.preprocess)  # fast by default
        (index, _, probability), = result.top_k(0, 1)
        assert index == 20 and probability == pytest.approx(0.959, abs=0.005)  # not 0.0026: logits as logits
        assert result.score == "logit"
        result = gradsight.saliency(net.eval(), ouzel_path, preprocess=embedded.preprocess, fast=False)
        np.testing.assert_allclose(result.saliency, plain.saliency, rtol=1e-6, atol=1e-6 * plain.saliency.max())


def _hidden_softmax(z):
    e = torch.exp(z - z.amax(1, keepdim=True))
    return e / e.sum(1, keepdim=True)


def test_probabilities_without_a_findable_softmax_refuse_logit_and_take_prob_as_it_is():
    inner = small_cnn(seed=5)
    net = Wrapped(_hidden_softmax, inner).eval()
    x = np.random.default_rng(1).standard_normal((2, 20, 20, 3)).astype(np.float32)
    for fast in (True, False):
        with pytest.raises(gradsight.BadInputError) as info:
            gradsight.saliency(net, x, fast=fast)
        message = str(info.value)
        assert "probabilit" in message and "logit" in message and "score='prob'" in message
        assert len(message.splitlines()) == 1
    probs, grad_prob = _autograd(net, x, lambda p: p)  # d p[top] / d input, of the output itself
    _, grad_logprob = _autograd(net, x, torch.log)
    for fast in (True, False):
        result = gradsight.saliency(net, x, score="prob", fast=fast)
        np.testing.assert_allclose(result.gradient, grad_prob, rtol=1e-4, atol=1e-5 * np.abs(grad_prob).max())
        np.testing.assert_allclose(result.probabilities, probs, rtol=1e-5, atol=1e-7)  # top-k are right
        np.testing.assert_allclose(result.logits, np.log(probs), rtol=1e-5, atol=1e-6)
        result = gradsight.saliency(net, x, score="logprob", fast=fast)
        np.testing.assert_allclose(result.gradient, grad_logprob, rtol=1e-4,
                                   atol=1e-5 * np.abs(grad_logprob).max())
    # the same numbers as the model that returns logits, asked for its probability
    reference = gradsight.saliency(inner, x, score="prob", fast=False)
    np.testing.assert_allclose(gradsight.saliency(net, x, score="prob", fast=False).gradient, reference.gradient,
                               rtol=1e-4, atol=1e-5 * np.abs(reference.gradient).max())


def test_a_softmax_over_another_axis_is_not_stepped_over():
    inner = small_cnn(seed=6)
    net = Wrapped(lambda z: torch.softmax(z, 0), inner).eval()  # over the batch: not class probabilities
    x = np.random.default_rng(2).standard_normal((3, 20, 20, 3)).astype(np.float32)
    out, grad = _autograd(net, x, lambda p: p)
    result = gradsight.saliency(net, x, fast=False)
    np.testing.assert_allclose(result.logits, out, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.gradient, grad, rtol=1e-4, atol=1e-5 * np.abs(grad).max())


class _DoublesInPlace(nn.Module):
    """Its first operation edits the input in place, and it ends in a functional softmax (found in a second run:
    that run must get the input as it was)."""

    def __init__(self):
        super().__init__()
        self.inner = small_cnn(seed=7)

    def forward(self, x):
        x.mul_(2.0)
        return torch.softmax(self.inner(x), dim=1)


def test_the_softmax_is_found_with_and_without_gradients_and_in_place_models_are_run_on_copies():
    from gradsight.adapters.torch.gradients import model_scores

    net = _DoublesInPlace().eval()
    x = np.random.default_rng(3).standard_normal((2, 20, 20, 3)).astype(np.float32)
    logits, grad = _autograd(net.inner, 2.0 * x, lambda z: z)
    result = gradsight.saliency(net, x, fast=False)
    np.testing.assert_allclose(result.logits, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.gradient, 2.0 * grad, rtol=1e-4, atol=1e-5 * np.abs(grad).max())
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        scores, stepped = model_scores(net, xt)
    assert stepped and torch.equal(xt, torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(scores.numpy(), logits, rtol=1e-5, atol=1e-6)


class _SoftmaxOnBrightInputs(nn.Module):
    """Ends in a functional softmax only for a batch whose mean is positive: a later batch than the first (the
    only one ``predict`` watches for functional softmaxes) must still give logits, never probabilities."""

    def __init__(self):
        super().__init__()
        self.inner = small_cnn(seed=11)

    def forward(self, x):
        logits = self.inner(x)
        return torch.softmax(logits, dim=1) if float(x.mean()) > 0 else logits


@pytest.mark.parametrize("fast", [True, False])
def test_predict_finds_a_functional_softmax_in_any_batch_not_only_the_first(fast):
    from gradsight.adapters.torch.gradients import predict

    rng = np.random.default_rng(5)
    dark = rng.uniform(-2.0, -1.0, (4, 20, 20, 3)).astype(np.float32)
    bright = rng.uniform(1.0, 2.0, (3, 20, 20, 3)).astype(np.float32)
    x = np.concatenate([dark, bright, dark[:2]])
    net = _SoftmaxOnBrightInputs().eval()
    with torch.no_grad():
        expected = net.inner(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    # batches of 2: the first (dark) is watched and finds no softmax; the bright ones end in one
    got = predict(net, x, batch_size=2, fast=fast)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    always = _DoublesInPlace().eval()
    with torch.no_grad():
        inner = always.inner(2.0 * torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    np.testing.assert_allclose(predict(always, x, batch_size=3, fast=fast), inner, rtol=1e-5, atol=1e-5)


def test_in_one_unchanged_during_block_predict_watches_once_and_still_finds_a_later_softmax(monkeypatch):
    from gradsight.adapters.torch import folding, gradients

    watched = []
    real = gradients._run_watched
    monkeypatch.setattr(gradients, "_run_watched", lambda m, x, watch: watched.append(watch) or real(m, x, watch))
    rng = np.random.default_rng(6)
    dark = rng.uniform(-2.0, -1.0, (4, 20, 20, 3)).astype(np.float32)
    bright = rng.uniform(1.0, 2.0, (2, 20, 20, 3)).astype(np.float32)
    net = _SoftmaxOnBrightInputs().eval()
    with torch.no_grad():
        expected = net.inner(torch.from_numpy(bright).permute(0, 3, 1, 2).contiguous()).numpy()
    with folding.unchanged_during(net):
        gradients.predict(net, dark, batch_size=2)
        gradients.predict(net, dark, batch_size=2)
        assert watched == [True, False, False, False]  # four batches, one watched
        got = gradients.predict(net, bright, batch_size=2)  # unwatched, but its rows are probabilities
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert watched[4:] == [False, True]
    watched.clear()
    gradients.predict(net, dark, batch_size=2)  # outside the block: its first batch is watched again
    assert watched == [True, False]
