"""Forward passes without gradients run as two streams on half the threads each (``two_streams``). The oracle
is the same work done one item after another: same results in the same order, the earliest item's failure
raised, and torch's thread count unchanged for the caller and for any thread that starts using torch meanwhile.
Only the folded copy of a model made of known stateless modules runs in streams."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gradsight.adapters.torch import gradients, two_streams
from gradsight.adapters.torch.folding import fold_batchnorm
from gradsight.adapters.torch.two_streams import in_two_streams, stateless


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _thread_count_in_a_new_thread() -> int:
    seen = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    return seen[0]


def test_results_come_back_in_order_from_both_streams(two_threads):
    names, lock, meanwhile = set(), threading.Lock(), []

    def work(i):
        with lock:
            names.add((threading.current_thread().name, torch.get_num_threads()))
        if i == 0:  # a thread that starts using torch while the streams run keeps the caller's count
            meanwhile.append(_thread_count_in_a_new_thread())
        time.sleep(0.01 * (i % 3))  # uneven items: the streams take them in turn, not in halves
        return i * i

    assert in_two_streams(work, list(range(11))) == [i * i for i in range(11)]
    assert {name for name, _ in names} == {"gradsight-stream-0", "gradsight-stream-1"}
    assert {threads for _, threads in names} == {1}  # half of the caller's two
    assert meanwhile == [2]
    assert torch.get_num_threads() == 2 and _thread_count_in_a_new_thread() == 2


def test_the_earliest_items_failure_is_raised_and_the_streams_stop(two_threads):
    started = []

    def work(i):
        started.append(i)
        if i == 1:  # taken at once by the second stream, fails late
            time.sleep(0.1)
            raise ValueError("item 1 is bad")
        if i == 3:  # fails first
            raise ValueError("item 3 is bad")
        time.sleep(0.01)
        return i

    with pytest.raises(ValueError, match="item 1 is bad"):
        in_two_streams(work, list(range(40)))
    assert len(started) < 40  # the streams stopped taking items
    assert torch.get_num_threads() == 2 and _thread_count_in_a_new_thread() == 2


def test_state_that_would_not_reach_the_streams_keeps_the_work_in_this_thread(two_threads):
    here = threading.current_thread().name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert in_two_streams(lambda i: threading.current_thread().name, [0, 1, 2]) == [here] * 3
    with TorchFunctionMode():
        assert in_two_streams(lambda i: threading.current_thread().name, [0, 1, 2]) == [here] * 3


def test_one_item_or_one_thread_runs_here():
    here = threading.current_thread().name
    assert in_two_streams(lambda i: threading.current_thread().name, [0]) == [here]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert in_two_streams(lambda i: threading.current_thread().name, [0, 1, 2]) == [here] * 3
    finally:
        torch.set_num_threads(before)


def test_predict_on_the_folded_copy_uses_both_streams_and_gives_the_serial_logits(embedded, two_threads,
                                                                                  monkeypatch):
    rng = np.random.default_rng(5)
    images = rng.normal(0, 1, (9, 64, 64, 3)).astype(np.float32)
    calls = []
    real = two_streams.in_two_streams

    def counted(work, items):
        calls.append(len(items))
        return real(work, items)

    monkeypatch.setattr(gradients, "in_two_streams", counted)
    got = gradients.predict(embedded.module, images, batch_size=2, fast=True)
    assert calls == [4]  # the first of five batches is watched for a softmax here; four go to the streams
    monkeypatch.setattr(gradients, "in_two_streams", lambda work, items: [work(item) for item in items])
    serial = gradients.predict(embedded.module, images, batch_size=2, fast=True)
    plain = gradients.predict(embedded.module, images, batch_size=2, fast=False)  # the model itself
    np.testing.assert_allclose(got, serial, rtol=1e-5, atol=1e-5 * float(np.abs(serial).max()))
    np.testing.assert_allclose(got, plain, rtol=1e-4, atol=1e-4 * float(np.abs(plain).max()))
    assert torch.get_num_threads() == 2


class _KeepsFeatures(nn.Module):
    """A user's module that keeps state between calls: two streams at once would read each other's."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x):
        self.features = self.bn(self.conv(x)).mean((2, 3))
        time.sleep(0.002)
        return self.fc(self.features)


def test_only_models_of_known_stateless_modules_run_in_streams(two_threads, monkeypatch):
    import torchvision

    assert stateless(torchvision.models.resnet18())
    assert not stateless(_KeepsFeatures())
    patched = nn.Sequential(nn.Conv2d(3, 4, 3))
    patched[0].forward = lambda x: x
    assert not stateless(patched)

    model = _KeepsFeatures().eval()
    model.bn.running_mean.uniform_(-1, 1)
    folded = fold_batchnorm(model, torch.randn(1, 3, 12, 12))
    assert folded is not None and folded.gradsight_stateless is False
    monkeypatch.setattr(gradients, "in_two_streams", lambda work, items: pytest.fail("streams on a user's class"))
    images = np.random.default_rng(0).normal(0, 1, (8, 12, 12, 3)).astype(np.float32)
    fast = gradients.predict(model, images, batch_size=1, fast=True)
    plain = gradients.predict(model, images, batch_size=1, fast=False)
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)
