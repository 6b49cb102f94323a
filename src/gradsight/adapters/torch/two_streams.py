"""Forward passes without gradients as two streams, each on half of torch's threads, for the private folded
copy of a model.

Example:
    >>> logits = in_two_streams(lambda x: runner(x), batches)   # [runner(b) for b in batches]  # doctest: +SKIP

One forward pass of a convolutional network on two cores leaves them idle part of the time: every layer ends
in a barrier and many layers (depthwise convolutions, small feature maps, elementwise steps) do not split
evenly. Two batches at once, one thread each, keep both busy: EfficientNet-Lite0 at batch 4 8.0 -> 6.4 ms an
image, ResNet50 at batch 4 41.9 -> 35.2 and at batch 8 38.2 -> 35.0 ms (interleaved medians, 2 cores). The
price is memory: two batches' activations at once.

Each stream sets only its own thread's OpenMP thread count. ``torch.set_num_threads`` would also set what
every thread that starts using torch meanwhile keeps for good (the explorer's request threads, say), so it is
not used; where torch's OpenMP library cannot be found, or thread-local state would not reach the streams
(autocast, torch function or dispatch modes), the items run one after another in the caller's thread.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

Item = TypeVar("Item")
Result = TypeVar("Result")

STREAMS = 2
# Modules whose forward keeps no state between calls; a user's own class might (self.features = ...), and two
# streams running it at once would read each other's.
STATELESS_PACKAGES = ("torch.nn.", "torchvision.", "timm.", "gradsight.")


def stateless(root: nn.Module) -> bool:
    """Whether every module under ``root`` is one of torch's, torchvision's, timm's or gradsight's own, with no
    ``forward`` set on the instance: what may run in two streams at once."""
    return all(type(m).__module__.startswith(STATELESS_PACKAGES) and "forward" not in m.__dict__
               for m in root.modules())


@functools.lru_cache(maxsize=1)
def _openmp():
    """The OpenMP runtime torch runs on (its ``omp_set_num_threads`` sets the calling thread's count only), or
    None where there is none to be found. Other packages load their own copies (scikit-learn's libgomp), so
    each candidate, torch's own folder first, is tried in a throwaway thread and kept only if torch sees it."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if len(line.split()) >= 6}
    except OSError:
        return None
    names = ("libgomp", "libiomp5", "libomp")
    own = os.path.dirname(torch.__file__)
    candidates = sorted((p for p in paths if p.rsplit("/", 1)[-1].startswith(names)),
                        key=lambda p: (not p.startswith(own), p))
    found = []

    def probe():
        before = torch.get_num_threads()  # torch's own set-up of this thread first
        wanted = 2 if before == 1 else 1
        for path in candidates:
            try:
                library = ctypes.CDLL(path)
                library.omp_set_num_threads.argtypes = [ctypes.c_int]
            except (OSError, AttributeError):
                continue
            library.omp_set_num_threads(wanted)
            if torch.get_num_threads() == wanted:
                found.append(library)
                return

    prober = threading.Thread(target=probe, name="gradsight-openmp-probe", daemon=True)
    prober.start()
    prober.join()
    return found[0] if found else None


def _thread_local_state_on() -> bool:
    modes = (getattr(torch._C, "_len_torch_function_stack", lambda: 0)()
             + getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)())
    return bool(modes) or torch.is_autocast_enabled("cpu")


def in_two_streams(work: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """``[work(item) for item in items]``, the items taken in turn by two threads that each run torch on half
    of the caller's threads; in this thread, one after another, where there are fewer than two items or
    threads, no OpenMP runtime to set, or thread-local state that the streams would not see.

    ``work`` runs in another thread: grad and inference mode must be set inside it. A failure stops both
    streams; the one of the earliest item is raised here.
    """
    threads = torch.get_num_threads()
    openmp = _openmp() if len(items) >= 2 and threads >= STREAMS else None
    if openmp is None or _thread_local_state_on():
        return [work(item) for item in items]
    results: list = [None] * len(items)
    failures: dict[int, BaseException] = {}
    taken = iter(range(len(items)))
    lock = threading.Lock()
    stop = threading.Event()  # a failure, or the caller interrupted: no stream starts another item

    def stream():
        torch.get_num_threads()  # torch's own set-up of this thread first: it would undo the next line
        openmp.omp_set_num_threads(threads // STREAMS)
        while True:
            with lock:
                index = None if stop.is_set() else next(taken, None)
            if index is None:
                return
            try:
                results[index] = work(items[index])
            except BaseException as error:  # handed to the caller's thread
                failures[index] = error
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
    if failures:
        raise failures[min(failures)]
    return results
