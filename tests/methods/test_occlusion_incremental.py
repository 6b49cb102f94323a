"""Passes that recompute only what a changed rectangle of the input reaches (``incremental``, occlusion's
windows). The oracle is the model itself run on the whole batch: every layer kind the rectangles pass through
(convolutions with padding, stride, dilation and groups, timm's SAME padding, max pooling with ceil_mode,
average pooling, BatchNorm, in-place activations, sums of rectangles of different sizes, concatenation) must
give the model's own numbers for windows at corners, borders and the centre, on odd and even sizes. ``run`` is
called directly, so a wrong rectangle cannot hide behind the runner's self-check, which has a test of its own."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_models import conditioned_resnet18, normal_inputs
from timm.layers import Conv2dSame
from torch import fx, nn

from gradsight.adapters.torch import gradients, incremental
from gradsight.adapters.torch.folding import block_answers, folded_copy, unchanged_during
from gradsight.adapters.torch.incremental import NearRunner, changed_rectangles, near_runner
from gradsight.adapters.torch.same_padding import SamePaddedConv
from gradsight.images import load_image


class EveryKind(nn.Module):
    """One of each layer kind a rectangle passes through; its output is the last map itself, flattened (a
    whole-map step), so that every position of it is compared, not an average that would hide a wrong one."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.depthwise = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1)
        self.same = SamePaddedConv(Conv2dSame(16, 8, 3, stride=2))
        self.grow = nn.Conv2d(8, 8, 3, padding=1)
        self.clamp = nn.ReLU6(inplace=True)

    def forward(self, x):
        x = self.pool(self.act(self.bn(self.stem(x))))
        y = torch.cat([self.dilated(x), F.relu(self.pointwise(x))], dim=1)
        y = y + torch.sigmoid(y) * 0.5
        z = self.same(self.avg(self.depthwise(y)))
        z = self.clamp(self.grow(z) + z)  # a sum of a grown rectangle and a smaller one
        return (z * 2.0 - 1).flatten(1)


class Asymmetric(nn.Module):
    """Kernels, strides, paddings and dilations that differ between rows and columns: a swapped axis shows."""

    def __init__(self):
        super().__init__()
        self.wide = nn.Conv2d(3, 6, (3, 5), stride=(1, 2), padding=(1, 2))
        self.pool = nn.MaxPool2d((3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
        self.avg = nn.AvgPool2d(2, stride=2)
        self.row = nn.Conv2d(6, 4, (1, 3), padding=(0, 1))

    def forward(self, x):
        return self.row(self.avg(self.pool(torch.relu(self.wide(x))))).flatten(1)


class EditsThroughAView(nn.Module):
    """An in-place step on a view of a map: the map's kept reference values must be the unedited ones."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.flatten(self.conv(x), 2).mul_(2.0).sum(2)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = EveryKind()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _occluded(reference: torch.Tensor, boxes) -> torch.Tensor:
    batch = reference.repeat(len(boxes), 1, 1, 1)
    for k, (r, c, h, w) in enumerate(boxes):
        batch[k, :, r:r + h, c:c + w] = 0.0
    return batch.contiguous(memory_format=torch.channels_last)


def _boxes(rows: int, cols: int, h: int, w: int):
    """Windows at the four corners, mid-borders and the centre."""
    return [(r, c, h, w) for r in (0, (rows - h) // 2, rows - h) for c in (0, (cols - w) // 2, cols - w)]


@pytest.mark.parametrize("make", [_model, Asymmetric, EditsThroughAView], ids=lambda f: f.__name__)
@pytest.mark.parametrize("size,window", [((64, 64), (8, 8)), ((37, 50), (5, 3)), ((41, 41), (1, 1)),
                                         ((48, 40), (12, 12))])
def test_the_changed_rectangles_alone_give_the_models_own_scores(make, size, window):
    torch.manual_seed(0)
    model = make().eval()
    torch.manual_seed(1)
    reference = torch.randn(1, 3, *size).contiguous(memory_format=torch.channels_last)
    batch = _occluded(reference, _boxes(*size, *window) + [(0, 0, 0, 0)])  # the last image is unchanged
    with torch.no_grad():
        runner = NearRunner(model, incremental.traced_graph(model), reference)
        assert runner.refused is None
        changed = changed_rectangles(batch, reference)
        assert changed.crop.shape[-2:] == window and [changed.top[0], changed.left[0]] == [0, 0]
        assert [changed.top[4], changed.left[4]] == [(size[0] - window[0]) // 2, (size[1] - window[1]) // 2]
        ours, plain, before = runner.run(changed), model(batch), model(reference)
    change = float((plain - before).abs().max())
    assert change > 1e-4  # the windows do change the outputs: a rectangle cut short would show
    np.testing.assert_allclose(ours.numpy(), plain.numpy(), rtol=0, atol=1e-3 * change)


def test_rectangles_shrink_through_strides_grow_through_kernels_and_stop_at_whole_maps():
    model = _model()
    reference = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    seen: dict[str, tuple] = {}
    with torch.no_grad():
        runner = NearRunner(model, incremental.traced_graph(model), reference)
        real_finish = runner._finish

        def finish(node, changed):
            out = real_finish(node, changed)
            seen[node.name] = tuple(out.crop.shape[-2:]) if isinstance(out, incremental.Changed) else "whole"
            return out
        runner._finish = finish
        runner.run(changed_rectangles(_occluded(reference, [(30, 30, 4, 4)]), reference))
    # Input rows 30..33 -> stem (k5 s2 p2) outputs o with 2o - 2 + [0, 5) meeting them: 14..17 (4 rows);
    # max pool (k3 s2 p1) outputs 7..9 (3 rows); the dilated conv reaches 2 further each side: 5..11.
    assert seen["stem"] == (4, 4) and seen["pool"] == (3, 3) and seen["dilated"] == (7, 7)
    # The depthwise conv (k3 s2 p1) of 16 rows: outputs 2..6 of 8; the average pool 1..7; timm's SAME conv
    # (k3 s2 on 8 rows: 1 zero after, none before) outputs 0..3: all 4 rows, whole maps from there on.
    assert seen["depthwise"] == (5, 5) and seen["avg"] == (7, 7) and seen["same"] == "whole"
    assert "grow" not in seen


def test_the_self_check_refuses_a_runner_that_disagrees_and_the_scores_stay_right(monkeypatch):
    model = _model()
    reference = torch.randn(1, 3, 48, 48).contiguous(memory_format=torch.channels_last)
    batch = _occluded(reference, _boxes(48, 48, 8, 8))
    real = incremental._span
    # One output too few on every side: rectangles miss part of what a window changes.
    monkeypatch.setattr(incremental, "_span", lambda *a: (lambda f, n: ([x + 1 for x in f], max(1, n - 2)))(*real(*a)))
    with torch.no_grad():
        runner = NearRunner(model, incremental.traced_graph(model), reference)
        assert float((runner.run(changed_rectangles(batch, reference)) - model(batch)).abs().max()) > 1e-3
        out = runner(batch)
        np.testing.assert_allclose(out.numpy(), model(batch).numpy(), rtol=0, atol=1e-6)
    assert runner.refused and not runner.checked


class EditsAReadTensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        a = self.conv(x)
        b = a.relu_()  # `a` is read again below: the kept reference values of `a` would be stale
        return (a + b).mean(dim=(2, 3))


class BranchesOnValues(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x).mean(dim=(2, 3))
        return x.mean(dim=(2, 3))


@pytest.mark.parametrize("model", [EditsAReadTensor(), BranchesOnValues()], ids=lambda m: type(m).__name__)
def test_graphs_it_cannot_follow_exactly_are_refused(model):
    assert incremental.traced_graph(model) is None
    assert near_runner(model, torch.randn(1, 3, 16, 16)) is None


class PausesMidTrace(nn.Module):
    """A model that, while torch.fx traces it, lets another thread run models before it goes on."""

    def __init__(self, inner: nn.Module, tracing: threading.Event, resume: threading.Event):
        super().__init__()
        self.inner, self.tracing, self.resume = inner, tracing, resume

    def forward(self, x):
        y = self.inner(x)
        if isinstance(y, fx.Proxy):
            self.tracing.set()
            assert self.resume.wait(20)
        return y


def test_other_threads_run_their_models_as_usual_while_a_trace_is_under_way():
    # torch.fx patches nn.Module.__call__ and __getattr__ for the whole process while it traces; calls from
    # other threads must pass through them: the model being traced (its parameters too) and any other model.
    tracing, resume = threading.Event(), threading.Event()
    model, other = PausesMidTrace(_model(0), tracing, resume).eval(), _model(1)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = {"same": model(x), "other": other(x)}
    seen, errors = {}, []

    def meanwhile():
        try:
            assert tracing.wait(20)
            with torch.no_grad():
                seen["same"], seen["other"] = model(x), other(x)
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)
        finally:
            resume.set()

    worker = threading.Thread(target=meanwhile)
    worker.start()
    traced = incremental.traced_graph(model)
    worker.join()
    assert not errors and set(seen) == {"same", "other"}
    for name, value in seen.items():
        assert type(value) is torch.Tensor, name
        np.testing.assert_array_equal(value.numpy(), expected[name].numpy())
    # The trace itself holds only the tracing thread's calls: it gives the model's own numbers.
    assert traced is not None
    reference = x[:1].clone(memory_format=torch.channels_last)
    batch = _occluded(reference, [(0, 0, 6, 6), (10, 12, 8, 4)])
    with torch.no_grad():
        ours = NearRunner(model, traced, reference).run(changed_rectangles(batch, reference))
        np.testing.assert_allclose(ours.numpy(), model(batch).numpy(), rtol=0, atol=1e-5)


class PausesBeforeItsBlock(nn.Module):
    """While torch.fx traces it, lets another thread act before its block (a module with children) is traced."""

    def __init__(self, inner: nn.Module, tracing: threading.Event, resume: threading.Event):
        super().__init__()
        self.inner, self.tracing, self.resume = inner, tracing, resume

    def forward(self, x):
        if isinstance(x, fx.Proxy):
            self.tracing.set()
            assert self.resume.wait(20)
        return self.inner(x)


def test_a_hook_another_thread_puts_on_the_copy_mid_trace_never_sees_the_trace():
    # The folded copy is shared (the explorer's threads put hooks on its blocks for unit gradients): the trace
    # must not run them with its proxies, and they must not break the trace.
    tracing, resume = threading.Event(), threading.Event()
    model = PausesBeforeItsBlock(_model(0), tracing, resume).eval()
    x = torch.randn(1, 3, 32, 32)
    seen, handles = [], []

    def meanwhile():
        assert tracing.wait(20)
        handles.append(model.inner.register_forward_hook(lambda m, a, out: seen.append(type(out))))
        with torch.no_grad():
            model(x)
        resume.set()

    worker = threading.Thread(target=meanwhile)
    worker.start()
    try:
        traced = incremental.traced_graph(model)
    finally:
        worker.join()
        for handle in handles:
            handle.remove()
    assert seen == [torch.Tensor] and traced is not None
    assert any(node.op == "call_module" and node.target == "inner.stem" for node in traced[0].nodes)


def test_any_thread_may_trace_and_the_trace_is_kept_once():
    model, seen = _model(), []
    workers = [threading.Thread(target=lambda: seen.append(incremental.traced_graph(model))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(seen) == 3 and seen[0] is not None and all(s is seen[0] for s in seen)
    assert incremental.traced_graph(model) is seen[0]


def test_hooks_see_the_whole_maps_the_model_makes():
    model = _model()
    reference = torch.randn(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    batch = _occluded(reference, [(0, 0, 4, 4), (20, 24, 4, 4)])
    shapes = []
    with torch.no_grad():
        runner = NearRunner(model, incremental.traced_graph(model), reference)
        handle = model.dilated.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
        try:
            ours = runner.run(changed_rectangles(batch, reference))
        finally:
            handle.remove()
        np.testing.assert_allclose(ours.numpy(), model(batch).numpy(), rtol=0, atol=1e-5)
    assert shapes == [(2, 8, 9, 9)]  # 32 rows -> stem 16 -> ceil_mode pool 9
    handle = nn.modules.module.register_module_forward_hook(lambda m, a, out: None)
    try:
        assert near_runner(model, reference) is None  # a global hook: every pass is a whole one
    finally:
        handle.remove()


def test_a_batch_that_changes_too_much_or_another_shape_runs_whole():
    model = _model()
    reference = torch.randn(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    wide = _occluded(reference, [(0, 0, 32, 20)])  # more than MAX_CHANGED of the area
    assert changed_rectangles(wide, reference) is None
    with torch.no_grad():
        runner = NearRunner(model, incremental.traced_graph(model), reference)
        for batch in (wide, torch.randn(2, 3, 40, 40)):
            np.testing.assert_array_equal(runner(batch).numpy(), model(batch).numpy())


def test_predict_keeps_one_runner_per_reference_and_equals_the_model(monkeypatch):
    model = conditioned_resnet18()  # torchvision's: the folded copy is made of modules known to keep no state
    photos = normal_inputs(2, 48, seed=3)
    calls = []
    real = NearRunner.run
    monkeypatch.setattr(NearRunner, "run", lambda self, changed: calls.append(id(self)) or real(self, changed))
    with unchanged_during(model):  # one gradsight call: a runner waits for the next call with its photo
        for photo in (photos[0], photos[0], photos[1]):
            batch = np.repeat(photo[None], 6, axis=0)
            for k in range(6):
                batch[k, 4 * k:4 * k + 8, 30 - 4 * k:38 - 4 * k] = 0.25
            fast = gradients.predict(model, batch, 4, fast=True, near=photo)
            plain = gradients.predict(model, batch, 4, fast=False)
            np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-4 * np.abs(plain).max())
            assert np.abs(plain - plain[:1]).max() > 1e-2 * np.abs(plain).max()
    # Batches of 4 and 2 per call: one runner for the first photo's two calls, another for the second photo.
    assert len(calls) == 6 and len({calls[0], calls[1], calls[2], calls[3]}) == 1 and calls[3] != calls[4]
    # Outside a gradsight call nothing is kept: the reference's values of every layer are large.
    gradients.predict(model, batch, 4, fast=True, near=photos[1])
    copy = folded_copy(model, gradients.as_nchw(batch[:1], model))
    assert not any(isinstance(v, NearRunner) for v in vars(copy).values())


def test_a_users_own_module_class_gets_whole_passes(monkeypatch):
    calls = []
    monkeypatch.setattr(NearRunner, "run", lambda self, changed: calls.append(1))
    model, photo = _model(), normal_inputs(1, 32)[0]  # EveryKind is not torch's, torchvision's or timm's
    batch = np.repeat(photo[None], 2, axis=0)
    batch[1, :4, :4] = 0.0
    np.testing.assert_allclose(gradients.predict(model, batch, 2, fast=True, near=photo),
                               gradients.predict(model, batch, 2, fast=False), rtol=0, atol=1e-4)
    assert calls == []


def test_the_embedded_models_occluded_scores_equal_its_whole_passes(embedded, ouzel_path):
    model = embedded.module
    photo = embedded.preprocess(load_image(ouzel_path))
    batch = np.repeat(photo[None], 8, axis=0)
    for k in range(8):
        batch[k, 24 * k:24 * k + 32, 200 - 24 * k:232 - 24 * k] = 0.0
    plain = gradients.predict(model, batch, 8, fast=False)
    with unchanged_during(model):
        fast = gradients.predict(model, batch, 8, fast=True, near=photo)
        runner = block_answers(model)["near_runner"]
    assert runner.checked and runner.refused is None
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-4 * np.abs(plain).max())
    assert np.abs(plain - plain[:1]).max() > 0.05  # the windows move the scores


def test_no_trace_while_another_torch_fx_trace_is_under_way():
    # Two tracers' patches of nn.Module.__call__ would be undone out of order: wait for the other one.
    model, inside = _model(), []

    class TracesOurs(nn.Module):
        def forward(self, x):
            inside.append(incremental.traced_graph(model))
            return x + 1

    fx.symbolic_trace(TracesOurs())
    assert inside == [None] and "_gradsight_fx" not in vars(model)
    assert incremental.traced_graph(model) is not None


def test_a_finished_tracer_passes_every_call_through(monkeypatch):
    # Should another tracer undo torch.fx's patches out of order and leave this one's in place, later calls
    # (from the thread that traced too) must still run the model, not add to a finished graph.
    model, tracers = _model(), []

    class Kept(incremental._Leaves):
        def __init__(self):
            super().__init__()
            tracers.append(self)

    monkeypatch.setattr(incremental, "_Leaves", Kept)
    assert incremental.traced_graph(model) is not None and len(tracers) == 1
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        out = tracers[0].call_module(model.stem, model.stem, (x,), {})
        np.testing.assert_array_equal(out.numpy(), model.stem(x).numpy())
    assert tracers[0].getattr("weight", model.stem.weight, {}) is model.stem.weight


def test_a_trace_asked_for_during_this_threads_own_trace_is_refused_not_waited_for():
    inner, asked = _model(1), []

    class AsksMidTrace(nn.Module):
        def forward(self, x):
            asked.append(incremental.traced_graph(inner))
            return x * 2

    worker = threading.Thread(target=lambda: incremental.traced_graph(AsksMidTrace()), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive() and asked == [None]  # a plain Lock taken twice by one thread would hang here
