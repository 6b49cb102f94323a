"""Forward passes without gradients run as two streams on half the threads each (``two_streams``). The oracle
is the same work done one item after another: same results in the same order, the first failure raised, and
torch's thread count as the caller had it afterwards, also for threads started later."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from gradsight.adapters.torch import gradients, two_streams
from gradsight.adapters.torch.two_streams import in_two_streams


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
    names, lock = set(), threading.Lock()

    def work(i):
        with lock:
            names.add((threading.current_thread().name, torch.get_num_threads()))
        time.sleep(0.01 * (i % 3))  # uneven items: the streams take them in turn, not in halves
        return i * i

    assert in_two_streams(work, list(range(11))) == [i * i for i in range(11)]
    assert {name for name, _ in names} == {"gradsight-stream-0", "gradsight-stream-1"}
    assert {threads for _, threads in names} == {1}  # half of the caller's two
    assert torch.get_num_threads() == 2 and _thread_count_in_a_new_thread() == 2


def test_the_first_failure_is_raised_and_the_thread_count_put_back(two_threads):
    started = []

    def work(i):
        started.append(i)
        if i == 2:
            raise ValueError("item 2 is bad")
        time.sleep(0.01)
        return i

    with pytest.raises(ValueError, match="item 2 is bad"):
        in_two_streams(work, list(range(40)))
    assert len(started) < 40  # the streams stopped taking items
    assert torch.get_num_threads() == 2 and _thread_count_in_a_new_thread() == 2


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


def test_the_users_model_itself_never_runs_in_the_streams(cnn, two_threads, monkeypatch):
    monkeypatch.setattr(gradients, "in_two_streams", lambda work, items: pytest.fail("streams on the user's model"))
    images = np.random.default_rng(0).normal(0, 1, (6, 32, 32, 3)).astype(np.float32)
    gradients.predict(cnn, images, batch_size=2, fast=False)
