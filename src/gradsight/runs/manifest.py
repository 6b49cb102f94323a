"""The run's append-only ``manifest.jsonl``: one JSON line per image and method, each flushed and fsynced.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "manifest.jsonl"
    >>> with Manifest(path) as manifest:
    ...     manifest.append({"path": "a.png", "method": "gradient", "status": "ok"})
    >>> Manifest(path).latest()[("a.png", "gradient")].status
    'ok'

The last line about an image and method is its state: ``ok`` (its output files are complete), ``error``
(its outputs were removed) or ``stale`` (written before outputs are replaced, so that a crash between
replacing the files and appending the new ``ok`` line never leaves an old line vouching for new files).
Lines that do not parse (a crash in the middle of an append) are ignored and counted; an append after such a
tail starts on a new line. One run at a time may write (an exclusive lock on the manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import NamedTuple

from ..errors import BadInputError

try:
    import fcntl
except ImportError:  # Windows: no advisory lock; runs must not share an output folder
    fcntl = None

MANIFEST_NAME = "manifest.jsonl"


def run_key(rel: str, sha256: str | None, model_sha256: str, method: str, options: dict) -> str:
    """The resume key: sha256 of the canonical JSON of path, content hash, model, method and options."""
    text = json.dumps({"path": rel, "sha256": sha256, "model_sha256": model_sha256, "method": method,
                       "options": options}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class State(NamedTuple):
    """What resuming needs from the latest line about an image and method (small: there is one per image)."""

    status: str
    key: str | None = None
    dtype: str | None = None  # the dtype the run asked for (float16 may have been stored as float32)
    map_file: str | None = None
    map_bytes: int | None = None
    png_file: str | None = None
    png_bytes: int | None = None

    @classmethod
    def of(cls, record: dict) -> State:
        def part(name: str) -> dict:
            value = record.get(name)
            return value if isinstance(value, dict) else {}

        npy, png = part("map"), part("png")
        return cls(str(record.get("status")), record.get("key"), part("outputs").get("dtype"), npy.get("file"),
                   npy.get("bytes"), png.get("file"), png.get("bytes"))


def read_lines(path: Path) -> tuple[list[dict], int]:
    """(every record that parses, in order; how many lines did not)."""
    records, damaged = [], 0
    if not path.exists():
        return records, damaged
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                damaged += 1
                continue
            if isinstance(record, dict) and "path" in record and "method" in record:
                records.append(record)
            else:
                damaged += 1
    return records, damaged


class Manifest:
    """Reading the state of a run and appending to it; use as a context manager to write."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.damaged = 0
        self._handle = None
        self._lock = threading.Lock()

    def latest(self) -> dict[tuple[str, str], State]:
        """{(relative path, method): the state its last line gives}."""
        records, self.damaged = read_lines(self.path)
        return {(r["path"], r["method"]): State.of(r) for r in records}

    def __enter__(self) -> Manifest:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "ab+")
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise BadInputError(f"output folder {str(self.path.parent)!r}",
                                    expected="no other gradsight run writing to it",
                                    got=f"a run in progress (it holds the lock on {self.path.name})",
                                    fix="wait for that run to finish, or choose another --out") from None
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":  # a crash cut the last line: keep it apart from what follows
                handle.write(b"\n")
                self._sync(handle)
        self._handle = handle
        return self

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            self._handle.write(line.encode())
            self._sync(self._handle)

    @staticmethod
    def _sync(handle) -> None:
        handle.flush()
        os.fsync(handle.fileno())

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the lock
            self._handle = None
