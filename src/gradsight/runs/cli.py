"""The ``attribute`` and ``collect`` sub-commands (wired into ``gradsight``'s CLI by ``add_parser``).

Example:
    $ gradsight attribute photos/ --recursive --out maps/          # resumable: run it again after Ctrl-C
    $ gradsight attribute 'val/*/*.JPEG' --png --engine ray --out maps/
    $ gradsight collect maps/ --to maps.zarr

Standalone (the same sub-commands without the rest of gradsight's CLI): ``python -m gradsight.runs.cli ...``.
Exit status: 0 when every map was made or was already there, 1 when some image failed (see the manifest),
2 for bad input (one line on stderr), 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import GradsightError


def add_parser(subparsers) -> None:
    """Add ``attribute`` and ``collect`` to an argparse sub-parser collection."""
    from ..models.names import DEFAULT_MODEL
    from .compute import METHODS

    att = subparsers.add_parser(
        "attribute", help="maps for whole folders and datasets: streamed, resumable, local or on Ray",
        description="Maps for every image of folders, globs or files. Outputs mirror the inputs' relative paths "
                    "under --out (<path>.<method>.npy, float16; .png with --png) with one line per image and "
                    "method in OUT/manifest.jsonl. Running the same command again skips what is done.")
    att.add_argument("inputs", nargs="+", metavar="DIR_OR_GLOB_OR_FILE", help="folders, glob patterns or files")
    att.add_argument("--recursive", "-r", action="store_true", help="search subfolders (and let '**' match them)")
    att.add_argument("--method", default="gradient", metavar="NAME[,NAME]",
                     help=f"methods to compute: {', '.join(sorted(METHODS))} (default: gradient)")
    att.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"a model name, or package.module:factory (default: {DEFAULT_MODEL})")
    att.add_argument("--weights", type=Path, help="a local state-dict file (loaded with weights_only=True)")
    att.add_argument("--out", type=Path, required=True, help="output folder (created; a run in it resumes)")
    att.add_argument("--batch-size", type=int, default=8, help="images per gradient pass (default: 8)")
    att.add_argument("--workers", type=int,
                     help="local: threads reading images (default: up to 4); ray: actors (default: CPUs / actor CPUs)")
    att.add_argument("--png", action="store_true", help="also write an 8-bit PNG of each map")
    att.add_argument("--float32", action="store_true", help="store maps as float32 (default: float16)")
    att.add_argument("--limit", type=int, metavar="N", help="only the first N images (sorted by path)")
    att.add_argument("--dry-run", action="store_true", help="list what would be computed; write nothing")
    att.add_argument("--engine", choices=("local", "ray"), default="local", help="where to compute (default: local)")
    att.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    att.add_argument("--actor-cpus", type=int, default=1, help="ray: CPUs and torch threads per actor (default: 1)")
    att.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="a method option, repeatable: score=logit|prob|logprob, target=auto|INDEX, fast=true|false")
    att.set_defaults(run=run_attribute)

    col = subparsers.add_parser("collect", help="gather a run's maps into Zarr, or its manifest into Parquet",
                                description="Gather the maps of a run into one chunked Zarr store (NAME.zarr), "
                                            "or its manifest into a Parquet table (NAME.parquet).")
    col.add_argument("out", type=Path, metavar="OUT", help="the --out folder of a `gradsight attribute` run")
    col.add_argument("--to", type=Path, required=True, metavar="maps.zarr|manifest.parquet", help="what to write")
    col.set_defaults(run=run_collect)


def _options(args) -> list[str]:
    """--option pairs, plus `gradsight saliency`'s own flags when the lead routes that command here."""
    options = list(getattr(args, "option", None) or [])
    if getattr(args, "score", None) is not None:
        options.append(f"score={args.score}")
    if getattr(args, "target", None) is not None:
        options.append(f"target={args.target}")
    if getattr(args, "plain", False):
        options.append("fast=false")
    return options


def run_attribute(args) -> int:
    """Run ``attribute`` from parsed arguments; returns the exit status."""
    from .engine import run_dataset

    inputs = getattr(args, "inputs", None) or getattr(args, "images", None)
    summary = run_dataset(
        [str(p) for p in inputs or []], args.out, model=args.model, weights=getattr(args, "weights", None),
        methods=getattr(args, "method", "gradient"), options=_options(args),
        recursive=getattr(args, "recursive", False), batch_size=getattr(args, "batch_size", 8),
        workers=getattr(args, "workers", None), png=getattr(args, "png", False),
        float32=getattr(args, "float32", False), limit=getattr(args, "limit", None),
        dry_run=getattr(args, "dry_run", False), engine=getattr(args, "engine", "local"),
        ray_address=getattr(args, "ray_address", None), actor_cpus=getattr(args, "actor_cpus", 1),
        progress=True, echo=print)
    print(summary.text())
    return summary.exit_code


def run_collect(args) -> int:
    from .collect import collect

    print(f"wrote {collect(args.out, args.to)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The two sub-commands on their own (for tests and until they are part of ``gradsight``)."""
    parser = argparse.ArgumentParser(prog="gradsight", description="dataset runs")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except GradsightError as err:
        print(f"gradsight: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradsight: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
