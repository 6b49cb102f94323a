"""The ``attribute`` and ``collect`` sub-commands (wired into ``gradsight``'s CLI by ``add_parser``), and
``gradsight saliency`` on folders.

Example:
    $ gradsight attribute photo.jpg --method gradient,integrated_gradients --option n_steps=32 --out out/
    $ gradsight attribute photos/ --recursive --method smoothgrad,grad_cam --out maps/   # resumable
    $ gradsight attribute 'val/*/*.JPEG' --png --engine ray --out maps/
    $ gradsight collect maps/ --to maps.zarr

``attribute`` has two modes. Image files only (or none: the bundled photo), without --recursive, --engine ray,
--limit or --dry-run: *files* mode, ``gradsight.attribute`` per method on chunks of --batch-size files, then
PNG + NPY + JSON per image and method and, with several methods, a comparison figure ``<stem>_methods.png``.
Folders, globs, --recursive, --engine ray, --limit or --dry-run: the *dataset* runner (``run_dataset``:
streamed, resumable, one float16 .npy per image and method and a manifest). Standalone (the sub-commands
without the rest of gradsight's CLI): ``python -m gradsight.runs.cli ...``. Exit status: 0 when every map was
made or was already there, 1 when some image failed (see the manifest), 2 for bad input (one line on stderr,
no file written), 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import BadInputError, GradsightError

_GLOB = set("*?[")
#: Flags that only a dataset run uses (files mode always writes float32 NPY, PNG and JSON).
_DATASET_FLAGS = (("png", "--png"), ("float32", "--float32"), ("workers", "--workers"),
                  ("actor_cpus", "--actor-cpus"), ("ray_address", "--ray-address"))


def add_parser(subparsers) -> None:
    """Add ``attribute`` and ``collect`` to an argparse sub-parser collection."""
    from ..models.names import DEFAULT_MODEL

    att = subparsers.add_parser(
        "attribute", help="attribution maps by any method: image files, or whole folders (streamed, resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Attribution maps of images by one or more methods (see `gradsight methods`).\n\n"
                    "Files mode - image files only, or none (the bundled photo), and none of --recursive, "
                    "--engine ray,\n--limit, --dry-run: per image and method OUT/<stem>_<method>.png, .npy "
                    "(float32) and .json,\nand with several methods a comparison figure OUT/<stem>_methods.png; "
                    "top-5 printed per image.\n\n"
                    "Dataset mode - any folder or glob, or --recursive, --engine ray, --limit or --dry-run: "
                    "outputs\nmirror the inputs' relative paths under --out (<path>.<method>.npy, float16; .png "
                    "with --png) with\none line per image and method in OUT/manifest.jsonl. Running the same "
                    "command again skips what\nis done; a changed option recomputes that method only.")
    att.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR_OR_GLOB",
                     help="image files ('-' for standard input), or folders and glob patterns "
                          "(default: the bundled ouzel.png)")
    att.add_argument("--recursive", "-r", action="store_true", help="search subfolders (and let '**' match them)")
    att.add_argument("--method", default="gradient", metavar="NAME[,NAME]",
                     help="methods to compute, comma-separated; `gradsight methods` lists them (default: gradient)")
    att.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="an option, repeatable: a method's own (n_steps=16; METHOD.KEY=VALUE for one of "
                          "several methods) or score=logit|prob|logprob, target=auto|INDEX, fast=true|false")
    att.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"a model name, or package.module:factory (default: {DEFAULT_MODEL})")
    att.add_argument("--weights", type=Path, help="a local state-dict file (loaded with weights_only=True)")
    att.add_argument("--download", action="store_true", help="allow downloading published weights")
    att.add_argument("--out", type=Path, required=True, help="output folder (created; a dataset run in it resumes)")
    att.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    dataset = att.add_argument_group("dataset mode only")
    dataset.add_argument("--workers", type=int,
                         help="local: threads reading images (default: up to 4); ray: actors "
                              "(default: CPUs / actor CPUs)")
    dataset.add_argument("--png", action="store_true", help="also write a PNG of each map")
    dataset.add_argument("--float32", action="store_true", help="store maps as float32 (default: float16)")
    dataset.add_argument("--limit", type=int, metavar="N", help="only the first N images (sorted by path)")
    dataset.add_argument("--dry-run", action="store_true", help="list what would be computed; write nothing")
    dataset.add_argument("--engine", choices=("local", "ray"), default="local",
                         help="where to compute (default: local)")
    dataset.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    dataset.add_argument("--actor-cpus", type=int, help="ray: CPUs and torch threads per actor (default: 1)")
    att.set_defaults(run=run_attribute)

    col = subparsers.add_parser("collect", help="gather a run's maps into Zarr, or its manifest into Parquet",
                                description="Gather the maps of a run into one chunked Zarr store (NAME.zarr), "
                                            "or its manifest into a Parquet table (NAME.parquet).")
    col.add_argument("out", type=Path, metavar="OUT", help="the --out folder of a `gradsight attribute` run")
    col.add_argument("--to", type=Path, required=True, metavar="maps.zarr|manifest.parquet", help="what to write")
    col.set_defaults(run=run_collect)


def _folder_or_glob(item) -> bool:
    text = str(item)
    return text != "-" and (os.path.isdir(text) or bool(_GLOB & set(text) and not os.path.lexists(text)))


def names_folders(items) -> bool:
    """True when some input is a folder or a glob pattern (not an existing file): a dataset run."""
    return any(_folder_or_glob(item) for item in items)


def only_folders(items) -> bool:
    """True when there are inputs and every one is a folder or a glob pattern (`gradsight saliency DIR`; a
    folder among files is refused by files mode, as it always was)."""
    return bool(items) and all(_folder_or_glob(item) for item in items)


def files_mode(args) -> bool:
    """Files mode: only existing image files (or none), and no flag that asks for the dataset runner (a
    missing path goes to the runner, which names it)."""
    missing = any(str(item) != "-" and not os.path.lexists(str(item)) for item in args.inputs)
    return not (getattr(args, "recursive", False) or getattr(args, "engine", "local") != "local"
                or getattr(args, "limit", None) is not None or getattr(args, "dry_run", False)
                or names_folders(args.inputs) or missing)


def _options(args) -> list[str]:
    """--option pairs, plus `gradsight saliency`'s own flags when that command runs on folders."""
    options = list(getattr(args, "option", None) or [])
    if getattr(args, "score", None) is not None:
        options.append(f"score={args.score}")
    if getattr(args, "target", None) is not None:
        options.append(f"target={args.target}")
    if getattr(args, "plain", False):
        options.append("fast=false")
    return options


def run_attribute(args) -> int:
    """Run ``attribute`` from parsed arguments (files or dataset mode); returns the exit status."""
    if files_mode(args):
        from .files import run_files

        for name, flag in _DATASET_FLAGS:
            if getattr(args, name, None) not in (None, False):
                raise BadInputError(flag, expected="a folder, a glob or --recursive (it applies to dataset runs)",
                                    got="image files only (files mode: PNG, float32 NPY and JSON per image "
                                        "and method)", fix=f"drop {flag}, or name the folder the images are in")
        return run_files(args.inputs, args.out, model=args.model, weights=args.weights, methods=args.method,
                         options=_options(args), batch_size=args.batch_size, download=args.download)
    from .engine import run_dataset

    if not args.inputs:
        raise BadInputError("inputs", expected="a folder, glob or image files for a dataset run "
                            "(--recursive, --engine ray, --limit, --dry-run)", got="none",
                            fix="name a folder, e.g. `gradsight attribute photos/ --recursive`")
    summary = run_dataset(
        [str(p) for p in args.inputs], args.out, model=args.model, weights=args.weights, methods=args.method,
        options=_options(args), recursive=args.recursive, batch_size=args.batch_size, workers=args.workers,
        png=args.png, float32=args.float32, limit=args.limit, dry_run=args.dry_run, engine=args.engine,
        ray_address=args.ray_address, actor_cpus=args.actor_cpus or 1, progress=True, echo=print,
        download=args.download)
    print(summary.text())
    return summary.exit_code


def run_saliency_folders(args) -> int:
    """``gradsight saliency DIR_OR_GLOB... [--recursive]``: a dataset run of the ``gradient`` method (--score,
    --target, --plain become its options); ``--expect K`` exits 1 when a top-1 class in the run's records is
    not K."""
    from .engine import run_dataset
    from .manifest import MANIFEST_NAME, read_lines

    expect = getattr(args, "expect", None)
    labels: list = []

    def check_expect(loaded, classes: int | None) -> None:
        labels.extend(loaded.class_names or ())
        if expect is not None and classes is not None and not 0 <= expect < classes:
            raise BadInputError("--expect", expected=f"a class index in 0..{classes - 1}", got=str(expect),
                                fix="pass a class index the model has")

    summary = run_dataset([str(p) for p in args.images], args.out, model=args.model, weights=args.weights,
                          methods="gradient", options=_options(args), recursive=getattr(args, "recursive", False),
                          batch_size=args.batch_size, progress=True, download=getattr(args, "download", False),
                          check_model=check_expect)
    print(summary.text())
    if expect is None or summary.interrupted:
        return summary.exit_code
    records, _ = read_lines(args.out / MANIFEST_NAME)
    latest = {r["path"]: r for r in records if r["method"] == "gradient"}
    wrong = [latest[rel] for rel in summary.paths
             if rel in latest and latest[rel].get("status") == "ok" and latest[rel]["prediction"]["class"] != expect]
    label = labels[expect] if expect < len(labels) else None
    for record in wrong[:10]:
        got = record["prediction"]
        print(f"gradsight: expected top-1 class {expect} ({label}) for {record['path']}, got {got['class']} "
              f"({got['label']})", file=sys.stderr)
    if len(wrong) > 10:
        print(f"gradsight: ... and {len(wrong) - 10} more images whose top-1 class is not {expect}", file=sys.stderr)
    return 1 if wrong else summary.exit_code


def run_collect(args) -> int:
    from .collect import collect

    print(f"wrote {collect(args.out, args.to)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The two sub-commands on their own (for tests and scripts)."""
    parser = argparse.ArgumentParser(prog="gradsight", description="attribution maps and dataset runs")
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
