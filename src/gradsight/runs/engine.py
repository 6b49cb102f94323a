"""``run_dataset``: maps for every image of folders or globs, streamed, resumable, on this machine or on Ray.

Example:
    >>> import gradsight.runs as runs                                                       # doctest: +SKIP
    >>> summary = runs.run_dataset(["photos/"], "maps/", recursive=True, model="efficientnet_lite0")  # doctest: +SKIP
    >>> summary.done, summary.skipped, summary.failed, summary.exit_code                    # doctest: +SKIP
    (2998, 0, 2, 1)

The local engine: worker threads read, hash and preprocess the next images while the main thread computes the
current batch; a writer thread writes each map atomically and then its manifest line. At most
``2 * max(batch_size, workers)`` images are being read or waiting, and at most two batches are being
written, so memory stays flat however many images there are. Running the same call again skips every image
and method whose latest manifest line is ``ok`` for the same file content, model weights, method and
options (and whose files are on disk), so changing one method's option recomputes that method only; Ctrl-C
stops after the current batch with the manifest consistent. A bad option value (checked up front on one blank
input, or refused by a method later) stops the run with ``BadInputError``; no image is marked failed for it.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import BadInputError
from .compute import check_methods, model_fingerprint, parse_methods, recorded_options, run_options, stores
from .discover import find_images
from .manifest import MANIFEST_NAME, Manifest
from .model import resolve_model
from .pipeline import compute_outcomes, ordered, plan, prepare, stop_on_sigint
from .progress import Counter, WriteQueue
from .records import RunSettings, Writer

ENGINES = ("local", "ray")
_TEMP_NAME = re.compile(r"^\..+\.(npy|png)\..+\.tmp$")


@dataclass
class RunSummary:
    """What a run did, counted in (image, method) pairs; ``exit_code`` is 0, 1 (some failed) or 130 (stopped)."""

    out: Path
    found: int = 0
    planned: int = 0
    done: int = 0
    images: int = 0  # images whose every method was written this run (ok or failed)
    skipped: int = 0
    failed: int = 0
    failures: list = field(default_factory=list)  # (relative path, method, message)
    todo: list = field(default_factory=list)  # (relative path, methods) still to compute (dry run)
    paths: list = field(default_factory=list)  # the relative path of every image found
    interrupted: bool = False
    dry_run: bool = False
    engine: str = "local"
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    max_in_flight: int = 0
    damaged_lines: int = 0

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else 1 if self.failed else 0

    def text(self) -> str:
        """A few lines for the terminal."""
        if self.dry_run:
            return (f"dry run: {self.found} images found; would compute {self.planned} maps and skip "
                    f"{self.skipped} already done; nothing written")
        lines = [f"{'interrupted: ' if self.interrupted else ''}{self.done} done, {self.skipped} skipped "
                 f"(already done), {self.failed} failed, of {self.found} images found; {self.elapsed_s:.1f} s"
                 + (f", {self.images_per_s:.2f} images/s" if self.done else "")
                 + f"; manifest: {self.out / MANIFEST_NAME}"]
        for rel, method, message in self.failures[:10]:
            lines.append(f"  failed {rel} [{method}]: {message}")
        if len(self.failures) > 10:
            lines.append(f"  ... and {len(self.failures) - 10} more (status 'error' in the manifest)")
        if self.damaged_lines:
            lines.append(f"  {self.damaged_lines} damaged manifest line(s) ignored (an earlier crash)")
        if self.interrupted:
            lines.append("  run the same command again to resume")
        return "\n".join(lines)


def _positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInputError(name, expected="a whole number >= 1", got=repr(value))


def run_dataset(inputs, out, *, model: Any = "efficientnet_lite0", weights=None, methods="gradient",
                options=None, recursive: bool = False, batch_size: int = 8, workers: int | None = None,
                png: bool = False, float32: bool = False, limit: int | None = None, dry_run: bool = False,
                engine: str = "local", ray_address: str | None = None, actor_cpus: int = 1,
                progress: bool = False, echo: Callable[[str], None] | None = None,
                download: bool = False, check_model: Callable[[Any, int | None], None] | None = None
                ) -> RunSummary:
    """Compute maps for every image of ``inputs`` (folders, globs, files) into ``out``; see the module doc.

    ``methods``: any registered method (``gradsight methods``), or several, comma-separated. ``options``:
    ``{"score": "prob", "n_steps": 16, "smoothgrad.n_samples": 20}`` or ``["score=prob", ...]``: the run
    options score, target, fast and each method's own (a key goes to every method that takes it,
    ``METHOD.KEY`` to one). Every option is checked, and every method run once on a blank input, before any
    image is read: a bad value raises ``BadInputError``. ``limit``: only the first N images (sorted by
    relative path). ``workers``: reading threads (local) or actors (Ray, each with ``actor_cpus`` CPUs and as
    many torch threads). ``echo`` receives the dry run's lines. ``download``: allow published weights of a
    named model to be downloaded. ``check_model(loaded, classes)`` runs once the model is loaded, before
    anything is written (the CLI checks ``--expect`` there).
    """
    started = time.perf_counter()
    for name, value, optional in (("batch_size", batch_size, False), ("workers", workers, True),
                                  ("limit", limit, True), ("actor_cpus", actor_cpus, False)):
        _positive(name, value, optional)
    if engine not in ENGINES:
        raise BadInputError("engine", expected="'local' or 'ray'", got=repr(engine))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"output folder {str(out)!r}", expected="a folder (or a path to create one)",
                            got="an existing file", fix="choose another --out")
    names = parse_methods(methods)
    run_options(names, options)  # option names and run-option values, before anything is read or loaded
    sources = find_images(inputs, recursive, exclude=out)[:limit]
    loaded, recipe = resolve_model(model, weights, download=download)
    classes = check_methods(loaded, names, run_options(names, options))
    per_method = run_options(names, options, classes)
    if check_model is not None:
        check_model(loaded, classes)
    threads = workers or min(4, os.cpu_count() or 1)
    settings = RunSettings(
        out=out, model=loaded.name, model_weights=loaded.spec.weights, model_sha256=model_fingerprint(loaded.module),
        class_names=loaded.class_names, float32=float32, png=png,
        options={m: dict(recorded_options(per_method[m]), preprocess=loaded.preprocess.as_dict()) for m in names},
        stores={m: stores(m, per_method[m]) for m in names},
        engine={"name": engine, "batch_size": batch_size}
        | ({"workers": threads} if engine == "local" else {"actors": workers, "actor_cpus": actor_cpus}))
    summary = RunSummary(out=out, found=len(sources), dry_run=dry_run, engine=engine,
                         paths=[source.rel for source in sources])
    manifest = Manifest(out / MANIFEST_NAME)
    stop = threading.Event()
    bars = dict(disable=not progress, dynamic_ncols=True, unit="img", smoothing=0.1)
    with stop_on_sigint(stop), ThreadPoolExecutor(threads, thread_name_prefix="gradsight-read") as pool:
        if dry_run:
            jobs = _plan(sources, names, manifest, settings, pool, stop, summary, bars)
            summary.todo = [(job.source.rel, job.methods) for job in jobs]
            for rel, todo in summary.todo:
                (echo or (lambda line: None))(f"would compute {rel} [{', '.join(todo)}]")
        else:
            _make_folder(out)
            with manifest:  # locked: one run at a time writes here
                _remove_temp_files(out)
                jobs = _plan(sources, names, manifest, settings, pool, stop, summary, bars)
                computing = time.perf_counter()
                if jobs and not stop.is_set():
                    with tqdm(total=len(jobs), desc="maps", **bars) as bar:
                        if engine == "local":
                            _run_local(jobs, loaded, per_method, Writer(settings, manifest), pool, batch_size,
                                       threads, stop, summary, bar)
                        else:
                            from .ray_engine import run_ray

                            run_ray(jobs, recipe, settings, per_method, Writer(settings, manifest), batch_size,
                                    workers, actor_cpus, ray_address, stop, summary, bar)
                seconds = time.perf_counter() - computing
                summary.images_per_s = summary.images / seconds if summary.images and seconds > 0 else 0.0
    summary.interrupted = stop.is_set()
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _plan(sources, names, manifest, settings, pool, stop, summary, bars) -> list:
    latest = manifest.latest()
    summary.damaged_lines = manifest.damaged
    with tqdm(total=len(sources), desc="checking", leave=False, **bars) as bar:
        jobs, summary.skipped = plan(sources, names, latest, settings, pool, stop, bar)
    summary.planned = sum(len(job.methods) for job in jobs)
    return jobs


def _make_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInputError(f"output folder {str(out)!r}", expected="a folder that can be created",
                            got=f"{type(err).__name__}: {err.strerror or err}", fix="choose another --out") from None


def _run_local(jobs, loaded, per_method, writer, pool, batch_size, workers, stop, summary, bar) -> None:
    counter = Counter(summary, bar)
    writes = WriteQueue(writer, counter, bound=2 * batch_size * len(per_method))
    cap = 2 * max(batch_size, workers)
    batch: list = []

    def track(in_flight: int) -> None:
        summary.max_in_flight = max(summary.max_in_flight, in_flight + len(batch))

    stream = ordered(pool, lambda job: prepare(job, loaded.preprocess), jobs, cap, stop, track)
    try:
        for ready in stream:
            counter.expect(ready.job.source.rel, len(ready.job.methods))
            if ready.error is not None:
                writes.put(ready.failed())
                continue
            batch.append(ready)
            if len(batch) == batch_size:
                writes.put(compute_outcomes(loaded, batch, per_method))
                batch = []
        if batch and not stop.is_set():
            writes.put(compute_outcomes(loaded, batch, per_method))
    finally:
        stream.close()
        writes.close()


def _remove_temp_files(out: Path) -> None:
    """Temporary files of an earlier run killed while writing (never renamed into place)."""
    for folder, _, files in os.walk(out):
        for name in files:
            if _TEMP_NAME.match(name):
                Path(folder, name).unlink(missing_ok=True)
