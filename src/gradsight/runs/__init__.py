"""Maps for whole folders and datasets: streamed, resumable, memory-flat, on one machine or on a Ray cluster.

Example:
    >>> from gradsight.runs import run_dataset, collect                                      # doctest: +SKIP
    >>> summary = run_dataset(["photos/"], "maps/", recursive=True)                          # doctest: +SKIP
    >>> print(summary.text())                                                                 # doctest: +SKIP
    300 done, 0 skipped (already done), 1 failed, of 301 images found; ...
    >>> collect("maps/", "maps.zarr")                                                         # doctest: +SKIP

Any registered method runs (``methods="smoothgrad,grad_cam"``, options as ``gradsight.attribute`` takes them).
Modules: ``discover`` (folders, globs, files -> relative paths), ``compute`` (the one place maps are computed:
any registered method, through its registry entry), ``manifest`` (the append-only manifest.jsonl), ``records``
(map files and manifest lines), ``pipeline`` (what both engines share), ``engine`` (``run_dataset`` and the
local engine), ``ray_engine``, ``collect``, ``files`` (``gradsight attribute`` on image files), ``cli``.
"""

from __future__ import annotations

from .collect import collect
from .engine import RunSummary, run_dataset

__all__ = ["RunSummary", "collect", "run_dataset"]
