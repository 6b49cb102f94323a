"""Forward passes without gradients as two streams, each on half of torch's threads, for the private folded
copy of a model.

Example:
    >>> logits = in_two_streams(lambda x: runner(x), batches)   # [runner(b) for b in batches]  # doctest: +SKIP

One forward pass of a convolutional network on two cores leaves them idle part of the time: every layer ends
in a barrier and many layers (depthwise convolutions, small feature maps, elementwise steps) do not split
evenly. Two batches at once, one thread each, keep both busy: EfficientNet-Lite0 at batch 4 8.0 -> 6.4 ms an
image, ResNet50 at batch 4 41.9 -> 35.2 and at batch 8 38.2 -> 35.0 ms (interleaved medians, 2 cores).

``torch.set_num_threads`` in a worker also sets what threads started later get, so the caller's count is put
back when the streams end, also when one fails.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")

STREAMS = 2


def in_two_streams(work: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """``[work(item) for item in items]``, the items taken in turn by two threads that each run torch with
    half of the caller's threads; plainly in this thread where there are fewer than two items or threads.

    ``work`` runs in another thread: thread-local state (grad mode, inference mode) must be set inside it. The
    first exception stops both streams and is raised here.
    """
    threads = torch.get_num_threads()
    if len(items) < 2 or threads < STREAMS:
        return [work(item) for item in items]
    results: list = [None] * len(items)
    failures: list[BaseException] = []
    taken = iter(range(len(items)))
    lock = threading.Lock()
    stop = threading.Event()  # a failure, or the caller interrupted: no stream starts another item

    def stream():
        torch.set_num_threads(threads // STREAMS)
        while True:
            with lock:
                index = None if stop.is_set() else next(taken, None)
            if index is None:
                return
            try:
                results[index] = work(items[index])
            except BaseException as error:  # handed to the caller's thread
                failures.append(error)
                stop.set()
                return

    workers = [threading.Thread(target=stream, name=f"gradsight-stream-{i}", daemon=True) for i in range(STREAMS)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        stop.set()
        for worker in workers:
            if worker.ident is not None:  # started
                worker.join()
        torch.set_num_threads(threads)
    if failures:
        raise failures[0]
    return results
