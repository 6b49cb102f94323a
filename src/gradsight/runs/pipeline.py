"""The parts both engines share: hashing and planning, reading one image, computing a batch, stopping on Ctrl-C.

Example:
    >>> from gradsight.images import example_image_path
    >>> from gradsight.models.spec import imagenet_preprocess
    >>> from gradsight.runs.discover import Source
    >>> job = Job(Source(example_image_path(), "ouzel.png"), None, ("gradient",))
    >>> ready = prepare(job, imagenet_preprocess())
    >>> ready.array.shape, ready.sha256 == file_sha256(example_image_path())[0]
    ((224, 224, 3), True)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import stat
import sys
import threading
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInputError, GradsightError
from ..images import load_image
from .compute import compute_batch
from .discover import Source
from .records import Outcome, RunSettings, is_done

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Job:
    """An image with the methods still to compute for it (its hash as seen when planning)."""

    source: Source
    sha256: str | None
    methods: tuple[str, ...]


@dataclass
class Prepared:
    """A job's image read, hashed and preprocessed (or the reason it could not be)."""

    job: Job
    sha256: str | None = None
    size: int | None = None
    array: np.ndarray | None = None
    converted_from: str | None = None
    orientation: str | None = None
    error: str | None = None
    timing: dict = field(default_factory=dict)

    def failed(self, message: str | None = None) -> list[Outcome]:
        return [Outcome(self.job.source.rel, m, self.sha256, self.size, error=message or self.error,
                        converted_from=self.converted_from, orientation=self.orientation, timing=self.timing)
                for m in self.job.methods]


def describe(err: BaseException) -> str:
    """The one-line message recorded for a failure: gradsight's own text, else the exception's type and text."""
    return str(err) if isinstance(err, GradsightError) else f"{type(err).__name__}: {err}"


def file_sha256(path) -> tuple[str | None, int | None]:
    """(sha256 hex, size) of a regular file's bytes, or (None, None) when it is not one or cannot be read."""
    digest, size = hashlib.sha256(), 0
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None, None  # a named pipe would block a reader forever; load_image explains the refusal
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError:
        return None, None
    return digest.hexdigest(), size


def ordered(pool: Executor, fn, items, cap: int, stop: threading.Event, track=None):
    """``fn(item)`` for each item on ``pool``, yielded in order, with at most ``cap`` submitted and not yet
    taken (memory stays flat); stops submitting once ``stop`` is set and cancels what has not started."""
    pending: deque = deque()
    items = iter(items)
    try:
        while True:
            while len(pending) < cap and not stop.is_set():
                item = next(items, _END)
                if item is _END:
                    break
                pending.append(pool.submit(fn, item))
            if track is not None:
                track(len(pending))
            if not pending or stop.is_set():
                return
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


_END = object()


def plan(sources: list[Source], methods: tuple[str, ...], latest: dict, settings: RunSettings, pool: Executor,
         stop: threading.Event, bar=None) -> tuple[list[Job], int]:
    """(the jobs still to do, how many image-method pairs are already done): hashes every file."""
    jobs, skipped = [], 0
    for source, (sha, _) in zip(sources, ordered(pool, lambda s: file_sha256(s.path), sources, 64, stop)):
        todo = tuple(m for m in methods
                     if not is_done(latest.get((source.rel, m)), settings.key(source.rel, sha, m), settings))
        skipped += len(methods) - len(todo)
        if todo:
            jobs.append(Job(source, sha, todo))
        if bar is not None:
            bar.update(1)
    return jobs, skipped


def prepare(job: Job, preprocess) -> Prepared:
    """Read, hash and preprocess one image; failures are returned, not raised."""
    ready = Prepared(job)
    path = job.source.path
    started = time.perf_counter()
    try:
        before = _stat(path)
        if before is not None and not before[2]:
            raise BadInputError(f"image {str(path)!r}", expected="a regular image file",
                                got="a named pipe, socket or device", fix="save the image to a file first")
        photo = load_image(path)
        with open(path, "rb") as handle:
            data = handle.read()
        ready.sha256, ready.size = hashlib.sha256(data).hexdigest(), len(data)
        ready.converted_from = photo.converted_from
        ready.orientation = getattr(photo, "orientation", None)
        if before is None or before != _stat(path) or len(data) != before[0]:
            raise BadInputError(f"image {str(path)!r}", expected="a file that stays the same while it is read",
                                got="a file that changed meanwhile", fix="run again once it is complete")
        read = time.perf_counter()
        ready.array = preprocess(photo)
        ready.timing = {"read_s": round(read - started, 6), "preprocess_s": round(time.perf_counter() - read, 6)}
    except Exception as err:  # a bad image is recorded and the run goes on
        ready.array, ready.error = None, describe(err)
        ready.timing = {"read_s": round(time.perf_counter() - started, 6)}
    return ready


def _stat(path) -> tuple[int, int, bool] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, stat.S_ISREG(st.st_mode)


def compute_outcomes(loaded, batch: list[Prepared], method_options: dict) -> list[Outcome]:
    """Maps for every prepared image and each of its methods; a failing batch is retried image by image so
    that one bad input fails alone. A method's ``GradsightError`` (an option value, a layer, the model) is raised."""
    outcomes = []
    groups: dict[tuple, list[Prepared]] = {}
    for ready in batch:
        groups.setdefault(ready.array.shape, []).append(ready)
    for group in groups.values():
        for method in dict.fromkeys(m for ready in group for m in ready.job.methods):
            items = [ready for ready in group if method in ready.job.methods]
            outcomes.extend(_compute(loaded, items, method, method_options[method]))
    return outcomes


def _compute(loaded, items: list[Prepared], method: str, options: dict) -> list[Outcome]:
    started = time.perf_counter()
    try:
        results = compute_batch(loaded, np.stack([ready.array for ready in items]), method, options)
    except GradsightError:
        raise  # a method refusing an option, a layer or the model is a mistake in the command: the run stops
    except Exception as err:
        if len(items) > 1:
            return [o for ready in items for o in _compute(loaded, [ready], method, options)]
        ready = items[0]
        return [Outcome(ready.job.source.rel, method, ready.sha256, ready.size, error=describe(err),
                        converted_from=ready.converted_from, orientation=ready.orientation, timing=ready.timing)]
    share = round((time.perf_counter() - started) / len(items), 6)
    return [Outcome(ready.job.source.rel, method, ready.sha256, ready.size, map=result.map, logits=result.logits,
                    target=result.target, effective=result.effective, per_image=result.per_image,
                    converted_from=ready.converted_from, orientation=ready.orientation,
                    timing=dict(ready.timing, compute_s=share, batch=len(items)))
            for ready, result in zip(items, results)]


@contextlib.contextmanager
def stop_on_sigint(stop: threading.Event):
    """While inside, a first Ctrl-C sets ``stop`` (the run ends after the current batch, its files and lines
    written); a second one raises KeyboardInterrupt at once. Only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\ngradsight: stopping after the current batch (Ctrl-C again to stop at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
