"""The ``gradsight`` command: a thin layer over the public API.

Example:
    $ gradsight saliency                         # bundled ouzel.png, embedded EfficientNet-Lite0
    $ gradsight saliency a.jpg b.jpg --model resnet50 --weights resnet50.pth --expect 20 --out out/

User errors print one line (expected / got / what to do) on stderr and exit with status 2, no traceback;
``--expect`` exits with status 1 when a top-1 class differs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from . import __version__
from .errors import BadInputError, GradsightError

EXIT_USER_ERROR = 2
EXIT_EXPECTATION = 1


def _target(text: str):
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a class index, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    from .models.names import CURATED, DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="gradsight", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"gradsight {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    sal = commands.add_parser("saliency", help="vanilla-gradient saliency maps of image classifiers",
                              description="Saliency maps (max over colour channels of |d score / d input|).")
    sal.add_argument("images", nargs="*", type=Path,
                     help="photos, '-' for standard input (default: the bundled ouzel.png); folders and glob "
                          "patterns only (or --recursive) make a dataset run, as `gradsight attribute DIR`: "
                          "float16 .npy maps and a resumable manifest.jsonl under --out")
    sal.add_argument("--recursive", "-r", action="store_true",
                     help="a dataset run that searches subfolders (and lets '**' match them)")
    sal.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"{', '.join(CURATED)}, torchvision:NAME or timm:NAME (default: {DEFAULT_MODEL})")
    sal.add_argument("--weights", type=Path, help="a local state-dict file (loaded with weights_only=True)")
    sal.add_argument("--download", action="store_true", help="allow downloading published weights")
    sal.add_argument("--target", type=_target, default=None, help="'auto' (predicted class) or a class index")
    sal.add_argument("--score", choices=("logit", "prob", "logprob"), default="logit",
                     help="the differentiated score (default: logit)")
    sal.add_argument("--expect", type=int, help="exit with status 1 unless every top-1 class is this index")
    sal.add_argument("--out", type=Path, default=Path("gradsight-out"), help="output folder")
    sal.add_argument("--batch-size", type=int, default=8, help="images per gradient pass (default: 8)")
    sal.add_argument("--plain", action="store_true", help="skip the BatchNorm-folded fast path")
    sal.set_defaults(run=_run_saliency)

    rf = commands.add_parser("rf", help="receptive field of every layer (analytic; --measure checks it)",
                             description="Per-layer receptive fields: size, effective stride and padding.")
    rf.add_argument("model", help="seed-cnn, seed-cnn-torch, a torchvision/timm name, or package.module:factory")
    rf.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="input rows and columns")
    rf.add_argument("--depth", type=int, default=1, help="list modules nested this deep (default: 1)")
    rf.add_argument("--all", action="store_true", help="list every module")
    rf.add_argument("--measure", action="store_true", help="also measure centre and corner units from gradients")
    rf.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rf.set_defaults(run=_run_rf)

    node = commands.add_parser("node", help="picture of d z[x, y, c] / d input for one unit of a layer",
                               description="Inner-node gradient of one unit, with its analytic field drawn.")
    node.add_argument("model", help="seed-cnn, seed-cnn-torch, a torchvision/timm name, or package.module:factory")
    node.add_argument("--layer", required=True, help="layer name (see `gradsight rf MODEL`) or child index")
    node.add_argument("--unit", type=int, nargs=3, required=True, metavar=("X", "Y", "C"),
                      help="row, column and channel of the unit, as in z[x, y, c]")
    node.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="input rows and columns")
    node.add_argument("--seed", type=int, default=0, help="seed of the uniform [0, 1) input (default: 0)")
    node.add_argument("--out", type=Path, default=Path("gradient.png"), help="PNG to write")
    node.set_defaults(run=_run_node)

    from .commands import evaluation, methods
    from .explorer.cli import add_parser as add_explore
    from .runs.cli import add_parser as add_runs

    methods.add_parser(commands)
    evaluation.add_parsers(commands, DEFAULT_MODEL)
    add_explore(commands)
    add_runs(commands)
    return parser


def _layer_arg(text: str, names: list[str]):
    if text in names:
        return text
    try:
        return int(text)
    except ValueError:
        return text


def _fmt(values) -> str:
    return "global" if values is None else "x".join(str(v) for v in values)


def _run_rf(args) -> int:
    import json

    from .models.registry import as_loaded_model
    from .receptive.analytic import input_shape_for, receptive_field
    from .receptive.measured import compare_fields

    if args.depth < 1:
        raise BadInputError("--depth", expected="a depth of at least 1 (1: the model's direct children)",
                            got=str(args.depth), fix="use --depth 1 or more, or --all for every module")
    network = as_loaded_model(args.model, architecture_only=True)
    shape = input_shape_for(network, args.input_size)
    report = receptive_field(network, shape[1:])
    rows = report.rows(None if args.all else args.depth)
    checks = {}
    if args.measure:
        for check in compare_fields(network, shape[1:], layers=[r.name for r in rows]):
            checks.setdefault(check.layer, []).append(check)
    if args.json:
        data = report.as_dict()
        data["layers"] = [row.as_dict() for row in rows]
        for entry in data["layers"]:
            if entry["name"] in checks:
                entry["measured"] = [{"unit": list(c.unit), "analytic": c.analytic, "measured": c.measured,
                                      "agree": c.agree} for c in checks[entry["name"]]]
        print(json.dumps(data, indent=2))
        return 0
    print(f"{report.model_name}: input {shape[0]} x {shape[1]} x {shape[2]} (channels x rows x cols)")
    header = f"{'layer':24s} {'kind':18s} {'output':>14s} {'kernel':>7s} {'stride':>6s} {'RF':>9s} " \
             f"{'eff.stride':>10s} {'eff.pad':>8s}"
    print(header + ("  measured (centre, corner)" if args.measure else ""))
    disagree = 0
    for row in rows:
        g = row.geometry
        line = (f"{row.name[:24]:24s} {row.kind[:18]:18s} {_fmt(row.output_shape):>14s} "
                f"{_fmt(g.kernel) if g else '-':>7s} {_fmt(g.stride) if g else '-':>6s} {_fmt(row.size):>9s} "
                f"{_fmt(row.stride) if row.stride else '-':>10s} {_fmt(row.padding) if row.padding else '-':>8s}")
        if not row.aligned:
            line += "  misaligned"
        if row.name in checks:
            marks = []
            for c in checks[row.name]:
                marks.append("dead" if c.dead else ("=" if c.agree else f"!= {c.measured}"))
                disagree += not c.agree
            line += "  " + ", ".join(marks)
        print(line)
    misaligned = [row for row in rows if not row.aligned]
    if misaligned:
        print(f"\nmisaligned paths: {misaligned[0].field.misaligned}")
    if args.measure:
        total = sum(len(v) for v in checks.values())
        print(f"\nmeasured vs analytic: {total - disagree} of {total} units agree")
    return 0


def _check_output_file(path: Path) -> None:
    """Refuse, before any work, an output path that cannot become a new file."""
    what = f"output {str(path)!r}"
    if path.is_dir():
        raise BadInputError(what, expected="a file name for the PNG", got="a directory",
                            fix=f"name a file inside it, e.g. {path / 'gradient.png'}")
    parent = path.parent
    if not parent.exists():
        raise BadInputError(what, expected="a file in an existing folder", got="a missing folder",
                            fix="create the folder first")
    if not parent.is_dir():
        raise BadInputError(what, expected="a file in a folder", got=f"a path under {str(parent)!r}, which is "
                            "not a folder", fix="choose another --out path")
    try:  # permissions alone do not tell (root ignores them; /proc refuses new files): try a nameless file
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as err:
        raise BadInputError(what, expected="a file in a folder that can be written",
                            got=f"{type(err).__name__}: {err.strerror or err}",
                            fix="choose another --out path") from None


def _run_node(args) -> int:
    import io

    from .adapters.discovery import adapter_for
    from .models.registry import as_loaded_model
    from .receptive.analytic import input_shape_for
    from .receptive.node_gradient import default_inputs, node_gradient
    from .rendering.fields import node_gradient_figure
    from .rendering.files import write_atomic

    if args.seed < 0:
        raise BadInputError("--seed", expected="a whole number >= 0", got=str(args.seed), fix="use e.g. --seed 0")
    _check_output_file(args.out)
    network = as_loaded_model(args.model, architecture_only=True)
    shape = input_shape_for(network, args.input_size)
    adapter = adapter_for(network.module)
    name, _ = adapter.resolve_layer(network.module, _layer_arg(args.layer, adapter.layer_names(network.module)))
    result = node_gradient(network, name, tuple(args.unit), default_inputs(shape, args.seed))
    buffer = io.BytesIO()
    node_gradient_figure(result, model_name=f"({network.name})").savefig(buffer, format="png", dpi=100)
    try:
        write_atomic(args.out, buffer.getvalue())
    except OSError as err:  # e.g. a read-only folder, /proc, a full disk
        raise BadInputError(f"output {str(args.out)!r}", expected="a file that can be written",
                            got=f"{type(err).__name__}: {err.strerror or err}",
                            fix="choose another --out path") from None
    (r0, r1), (c0, c1) = result.rect
    box = result.support_box()
    print(f"{network.name} {name}[x={args.unit[0]}, y={args.unit[1]}, c={args.unit[2]}] = {result.values[0]:.6g}")
    print(f"analytic field: rows {r0}..{r1}, cols {c0}..{c1}")
    print("measured support: " + ("none - the unit is dead on this input (try another --seed)" if box is None
                                  else f"rows {box[0][0]}..{box[0][1]}, cols {box[1][0]}..{box[1][1]}"))
    print(f"wrote {args.out}")
    return 0


def _progress(total: int):
    """The saliency progress bar: one step per input, done when its files are written; hidden off a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="saliency", unit="image", file=sys.stderr, disable=None)


def _class_range_check(expect: int | None, classes: int | None) -> None:
    if expect is not None and classes is not None and not 0 <= expect < classes:
        raise BadInputError("--expect", expected=f"a class index in 0..{classes - 1}", got=str(expect),
                            fix="pass a class index the model has")


def _run_saliency(args) -> int:
    from .commands.options import image_arguments
    from .images import Photo, example_image_path
    from .methods.saliency import saliency_batches
    from .models.registry import load_model
    from .rendering.files import make_output_folder, output_stems
    from .rendering.saliency_files import write_saliency
    from .runs.cli import only_folders, run_saliency_folders

    if args.recursive or only_folders(args.images):
        return run_saliency_folders(args)
    if args.batch_size < 1:
        raise BadInputError("--batch-size", expected="a whole number >= 1", got=str(args.batch_size))
    items = image_arguments(list(args.images)) if args.images else [example_image_path()]
    existing = next(p for p in (args.out.absolute(), *args.out.absolute().parents) if p.exists())
    if not existing.is_dir():  # the folder itself, or one it would be created in, is a file
        raise BadInputError(f"output folder {str(args.out)!r}", expected="a folder that can be created and "
                            "written", got=f"{str(existing)!r} is a file", fix="choose another --out folder")
    model = load_model(args.model, weights=args.weights, download=args.download)
    if model.class_names is not None:
        _class_range_check(args.expect, len(model.class_names))
    batches = saliency_batches(model, items, target=args.target, score=args.score, fast=not args.plain,
                               batch_size=args.batch_size)
    stems = output_stems([item.source if isinstance(item, Photo) else str(item) for item in items])
    print(f"model: {model.name} ({model.spec.weights})")
    wrong, count, files, bar = [], 0, 0, _progress(len(items))
    try:
        bar.set_postfix_str("gradients")
        for part in batches:
            if count == 0:
                _class_range_check(args.expect, part.logits.shape[1])
                make_output_folder(args.out)
            for i in range(len(part)):
                bar.set_postfix_str(f"rendering {stems[count]}")
                written = write_saliency(part, i, args.out, stems[count])
                files += len(written)
                bar.update(1)
                bar.write(_report(part, i, written), file=sys.stdout)
                predicted = int(part.predictions[i])
                if args.expect is not None and predicted != args.expect:
                    wrong.append((part.sources[i], predicted, part.label(predicted), part.label(args.expect)))
                count += 1
            bar.set_postfix_str("gradients")
    finally:
        bar.close()
    print(f"\nwrote {files} files to {args.out}/")
    for source, predicted, label, expected_label in wrong:
        print(f"gradsight: expected top-1 class {args.expect} ({expected_label}) for {source}, got {predicted} "
              f"({label})", file=sys.stderr)
    return EXIT_EXPECTATION if wrong else 0


def _report(part, i: int, written: list[Path]) -> str:
    """What the terminal shows for one input: source, notes, top-5, what was explained, files written."""
    lines = part.summary_lines(i)
    target = int(part.targets[i])
    lines.append(f"  saliency of {part.score}[{target}] ({part.label(target)})")
    lines.append("  wrote " + ", ".join(p.name for p in written))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except GradsightError as err:
        print(f"gradsight: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("gradsight: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
