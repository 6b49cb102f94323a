"""The Ray engine: the images not yet done become a Ray Dataset; a pool of actors, each holding the model,
reads and computes batches; the driver writes the maps and manifest lines exactly as the local engine does.

Example:
    >>> from gradsight.runs import run_dataset                                               # doctest: +SKIP
    >>> run_dataset(["/shared/imagenet/val"], "/shared/maps", recursive=True, engine="ray")  # doctest: +SKIP

The cluster comes from ``ray_address`` or ``RAY_ADDRESS``; without either a local Ray is started with this
machine's CPUs (and shut down afterwards). A Ray already initialised in this process is used as it is.
Actors read the images themselves, so the input paths must be readable at the same place on every node (a
shared file system); only the driver writes. Each actor reserves ``actor_cpus`` CPUs and sets torch to as many
threads (Ray would otherwise leave torch at OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import BadInputError, GradsightError, MissingDependencyError
from .compute import describe_fatal, fatal_error, model_fingerprint
from .discover import Source
from .pipeline import Job, compute_outcomes, describe, prepare
from .progress import Counter, WriteQueue
from .records import Outcome

_COLUMNS = ("rel", "method", "sha256", "size", "error", "converted_from", "orientation", "map", "logits", "timing",
            "worker", "target", "effective", "per_image", "fatal")


def _ray():
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise MissingDependencyError("the Ray engine needs Ray Data; install it with: pip install 'gradsight[ray]'"
                                     ) from err
    return ray


class MapActor:
    """One Ray actor: the model loaded once, then batches of (path, rel, methods) rows -> one row per map."""

    def __init__(self, recipe, options: dict, threads: int, model_sha256: str):
        self.options, self.threads, self.fatal = options, threads, ""
        try:
            import torch

            torch.set_num_threads(threads)
            self.torch_threads = torch.get_num_threads()
        except ImportError:
            self.torch_threads = None
        try:
            self.loaded = recipe.load()
            found = model_fingerprint(self.loaded.module)
            if found != model_sha256:
                self.fatal = describe_fatal(BadInputError(
                    f"the model on Ray node {_node()}",
                    expected=f"the driver's weights (sha256 {model_sha256[:12]}...)",
                    got=f"weights with sha256 {found[:12]}...", fix="install the same weights on every node"))
        except Exception as err:
            self.fatal = describe_fatal(BadInputError(f"the model on Ray node {_node()}", expected="a model that loads",
                                                      got=describe(err), fix="install the same model on every node"))
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="gradsight-read")

    def __call__(self, batch: dict) -> dict:
        rows = {name: [] for name in _COLUMNS}
        if self.fatal:
            _row(rows, rel="", method="", fatal=self.fatal)
            return _columns(rows)
        jobs = [Job(Source(path, rel), None, tuple(methods.split(",")))
                for path, rel, methods in zip(batch["path"], batch["rel"], batch["methods"])]
        ready = list(self.pool.map(lambda job: prepare(job, self.loaded.preprocess), jobs))
        outcomes = [o for r in ready if r.error is not None for o in r.failed()]
        good = [r for r in ready if r.error is None]
        if good:
            try:
                outcomes += compute_outcomes(self.loaded, good, self.options)
            except GradsightError as err:  # a mistake in the command: the driver stops the run with it
                _row(rows, rel="", method="", fatal=describe_fatal(err))
                return _columns(rows)
        worker = json.dumps({"node": _node(), "pid": os.getpid(), "torch_threads": self.torch_threads})
        for o in outcomes:
            _row(rows, rel=o.rel, method=o.method, sha256=o.sha256 or "", size=-1 if o.size is None else o.size,
                 error=o.error or "", converted_from=o.converted_from or "", orientation=o.orientation or "",
                 map=_npy(o.map), logits=_npy(o.logits), timing=json.dumps(o.timing), worker=worker,
                 target=-1 if o.target is None else int(o.target), effective=json.dumps(o.effective),
                 per_image=json.dumps(o.per_image))
        return _columns(rows)


def _node() -> str:
    import socket

    return socket.gethostname()


def _npy(values) -> bytes:
    if values is None:
        return b""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(values, dtype=np.float32))
    return buffer.getvalue()


def _row(rows: dict, **values) -> None:
    defaults = {"sha256": "", "size": -1, "error": "", "converted_from": "", "orientation": "", "map": b"",
                "logits": b"", "timing": "{}", "worker": "{}", "target": -1, "effective": "{}", "per_image": "{}",
                "fatal": ""}
    for name in _COLUMNS:
        value = values.get(name, defaults.get(name))
        rows[name].append(value)


def _columns(rows: dict) -> dict:
    out = {}
    for name, values in rows.items():
        column = np.empty(len(values), dtype=np.int64 if name in ("size", "target") else object)
        column[:] = values
        out[name] = column
    return out


def _outcome(batch: dict, i: int) -> Outcome:
    error = batch["error"][i]
    map_bytes, logit_bytes = batch["map"][i], batch["logits"][i]
    timing = json.loads(batch["timing"][i])
    timing["worker"] = json.loads(batch["worker"][i])
    size, target = int(batch["size"][i]), int(batch["target"][i])
    return Outcome(str(batch["rel"][i]), str(batch["method"][i]), str(batch["sha256"][i]) or None,
                   None if size < 0 else size,
                   map=np.load(io.BytesIO(map_bytes)) if len(map_bytes) else None,
                   logits=np.load(io.BytesIO(logit_bytes)) if len(logit_bytes) else None,
                   error=str(error) or None,
                   converted_from=str(batch["converted_from"][i]) or None,
                   orientation=str(batch["orientation"][i]) or None, timing=timing,
                   target=None if target < 0 else target, effective=json.loads(batch["effective"][i]),
                   per_image=json.loads(batch["per_image"][i]))


def start(ray, address: str | None) -> bool:
    """Connect to ``address`` / RAY_ADDRESS, or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = dict(logging_level=logging.WARNING, include_dashboard=False)
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise BadInputError("Ray address", expected="a running Ray cluster", got=f"{address!r} ({err})",
                                fix="start it with `ray start --head`, or leave --ray-address and RAY_ADDRESS "
                                    "unset for a local Ray") from None
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ray.init(num_cpus=cpus or 1, **quiet)
    return True


def run_ray(jobs, recipe, settings, per_method, writer, batch_size, workers, actor_cpus, address, stop, summary,
            bar) -> None:
    """Compute ``jobs`` on Ray; results are written on the driver as they arrive."""
    ray = _ray()
    started = start(ray, address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if actor_cpus > cpus:
            raise BadInputError("actor CPUs", expected=f"at most the cluster's {cpus} CPUs", got=str(actor_cpus),
                                fix="lower --actor-cpus")
        batches = -(-len(jobs) // batch_size)
        actors = min(workers or max(1, cpus // actor_cpus), batches)  # an actor without a batch only costs
        settings.engine["actors"] = actors
        counter = Counter(summary, bar)
        for job in jobs:
            counter.expect(job.source.rel, len(job.methods))
        rows = [{"path": str(job.source.path), "rel": job.source.rel, "methods": ",".join(job.methods)}
                for job in jobs]
        # enough blocks for every actor to get work, few enough that per-block overhead stays small
        blocks = min(batches, max(4 * actors, -(-batches // 16)))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            MapActor, fn_constructor_kwargs={"recipe": recipe, "options": per_method, "threads": actor_cpus,
                                             "model_sha256": settings.model_sha256},
            batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=actor_cpus,
            batch_format="numpy")
        writes = WriteQueue(writer, counter, bound=2 * batch_size * len(per_method))
        stream = dataset.iter_batches(batch_size=None, batch_format="numpy")
        try:
            for batch in stream:
                fatal = [f for f in batch["fatal"] if f]
                if fatal:
                    raise fatal_error(fatal[0])
                writes.put([_outcome(batch, i) for i in range(len(batch["rel"]))])
                summary.max_in_flight = max(summary.max_in_flight, len(writes.futures))
                if stop.is_set():
                    break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            writes.close()
    finally:
        if started:
            ray.shutdown()
