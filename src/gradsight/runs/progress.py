"""Counting a run's progress and writing its results from one thread, for both engines.

Example:
    >>> counter = Counter(summary, bar)          # doctest: +SKIP
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .records import Outcome, Writer


class Counter:
    """Counts written lines into the summary and the progress bar (images, when their last method is in)."""

    def __init__(self, summary: Any, bar):
        self.summary, self.bar = summary, bar
        self.remaining: dict[str, int] = {}

    def expect(self, rel: str, methods: int) -> None:
        self.remaining[rel] = self.remaining.get(rel, 0) + methods

    def written(self, record: dict) -> None:
        if record["status"] == "ok":
            self.summary.done += 1
        else:
            self.summary.failed += 1
            self.summary.failures.append((record["path"], record["method"], record["error"]))
        rel = record["path"]
        self.remaining[rel] = self.remaining.get(rel, 1) - 1
        if self.remaining[rel] <= 0:
            self.remaining.pop(rel, None)
            self.summary.images += 1
            self.bar.update(1)
            if self.summary.failed:
                self.bar.set_postfix(failed=self.summary.failed, refresh=False)


class WriteQueue:
    """A writer thread with at most ``bound`` outcomes waiting (each holds a map in memory)."""

    def __init__(self, writer: Writer, counter: Counter, bound: int):
        self.writer, self.counter, self.bound = writer, counter, bound
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="gradsight-write")
        self.futures: deque = deque()

    def put(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self.futures.append(self.pool.submit(self.writer.write, outcome))
        while len(self.futures) > self.bound:
            self.counter.written(self.futures.popleft().result())

    def close(self) -> None:
        """Wait for every write (also after an error, so no file is left half-made), then raise the first
        write error."""
        self.pool.shutdown(wait=True)
        error = None
        while self.futures:
            future = self.futures.popleft()
            if future.exception() is None:
                self.counter.written(future.result())
            elif error is None:
                error = future.exception()
        if error is not None:
            raise error
