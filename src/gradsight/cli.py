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
from pathlib import Path

from . import __version__
from .errors import GradsightError

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
    from .models.registry import CURATED, DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="gradsight", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"gradsight {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    sal = commands.add_parser("saliency", help="vanilla-gradient saliency maps of image classifiers",
                              description="Saliency maps (max over colour channels of |d score / d input|).")
    sal.add_argument("images", nargs="*", type=Path, help="photos (default: the bundled ouzel.png)")
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

    from .methods.fields import as_network, input_shape_for, receptive_field
    from .methods.measured_field import compare_fields

    network = as_network(args.model)
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


def _run_node(args) -> int:
    import io

    from .adapters import adapter_for
    from .methods.fields import as_network, input_shape_for
    from .methods.node_gradient import default_inputs, node_gradient
    from .outputs import write_atomic
    from .plotting_fields import node_gradient_figure

    network = as_network(args.model)
    shape = input_shape_for(network, args.input_size)
    adapter = adapter_for(network.module)
    name, _ = adapter.resolve_layer(network.module, _layer_arg(args.layer, adapter.layer_names(network.module)))
    result = node_gradient(network, name, tuple(args.unit), default_inputs(shape, args.seed))
    buffer = io.BytesIO()
    node_gradient_figure(result, model_name=f"({network.name})").savefig(buffer, format="png", dpi=100)
    if args.out.parent and not args.out.parent.exists():
        from .errors import BadInputError

        raise BadInputError(f"output {str(args.out)!r}", expected="a file in an existing folder",
                            got="a missing folder", fix="create the folder first")
    write_atomic(args.out, buffer.getvalue())
    (r0, r1), (c0, c1) = result.rect
    box = result.support_box()
    print(f"{network.name} {name}[x={args.unit[0]}, y={args.unit[1]}, c={args.unit[2]}] = {result.values[0]:.6g}")
    print(f"analytic field: rows {r0}..{r1}, cols {c0}..{c1}")
    print("measured support: " + ("none - the unit is dead on this input (try another --seed)" if box is None
                                  else f"rows {box[0][0]}..{box[0][1]}, cols {box[1][0]}..{box[1][1]}"))
    print(f"wrote {args.out}")
    return 0


def _run_saliency(args) -> int:
    from .methods.saliency import saliency
    from .models.registry import load_model
    from .outputs import save_saliency

    model = load_model(args.model, weights=args.weights, download=args.download)
    images = list(args.images) or None
    result = saliency(model, images, target=args.target, score=args.score, fast=not args.plain,
                      batch_size=args.batch_size, progress=True)
    print(f"model: {model.name} ({model.spec.weights})")
    for i in range(len(result)):
        print(f"\n{result.sources[i]}")
        for rank, (cls, name, prob) in enumerate(result.top_k(i, 5), start=1):
            print(f"  {rank}. {cls:4d}  {prob:7.4f}  {name}")
        target = int(result.targets[i])
        print(f"  saliency of {result.score}[{target}] ({result.label(target)})")
    written = save_saliency(result, args.out)
    print(f"\nwrote {len(written)} files to {args.out}/: " + ", ".join(p.name for p in written))
    if args.expect is not None:
        wrong = [(s, int(p)) for s, p in zip(result.sources, result.predictions) if int(p) != args.expect]
        if wrong:
            for source, predicted in wrong:
                print(f"gradsight: expected top-1 class {args.expect} ({result.label(args.expect)}) for "
                      f"{source}, got {predicted} ({result.label(predicted)})", file=sys.stderr)
            return EXIT_EXPECTATION
    return 0


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
