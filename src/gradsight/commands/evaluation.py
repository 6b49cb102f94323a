"""``gradsight sanity`` and ``gradsight faithfulness``: can a map be trusted?

Example:
    $ gradsight sanity --method gradient,guided_backprop --out trust/      # the bundled photo, embedded model
    $ gradsight faithfulness photo.jpg --method gradient,grad_cam --metric deletion,insertion --out trust/
"""

from __future__ import annotations

import argparse
import io
import json
import warnings
from pathlib import Path

from .options import image_arguments, parse_options, per_method, split_names


def add_parsers(commands, default_model: str) -> None:
    sanity = commands.add_parser("sanity", help="do the maps change when the model's weights are randomised?",
                                 description="Model-randomisation sanity checks (Adebayo et al. 2018).")
    _common(sanity, default_model)
    sanity.add_argument("--order", choices=("cascade", "independent"), default="cascade",
                        help="randomise from the top down, cumulatively (cascade), or one block at a time")
    sanity.add_argument("--blocks", help="comma-separated blocks to randomise, top first (default: all)")
    sanity.add_argument("--method", default="gradient,guided_backprop,grad_cam",
                        help="methods to check (default: gradient,guided_backprop,grad_cam)")
    sanity.set_defaults(run=run_sanity)
    faith = commands.add_parser("faithfulness", help="deletion and insertion curves of the maps",
                                description="Deletion / insertion curves and their areas (Petsiuk et al. 2018).")
    _common(faith, default_model)
    faith.add_argument("--method", default="gradient", help="methods to evaluate, comma-separated")
    faith.add_argument("--metric", default="deletion,insertion", help="deletion, insertion or both")
    faith.add_argument("--steps", type=int, default=224, help="curve steps (default: 224)")
    faith.set_defaults(run=run_faithfulness)


def _common(parser: argparse.ArgumentParser, default_model: str) -> None:
    parser.add_argument("images", nargs="*", type=Path, help="photos (default: the bundled ouzel.png)")
    parser.add_argument("--model", default=default_model, help=f"model name (default: {default_model})")
    parser.add_argument("--weights", type=Path, help="a local weights file")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="a method option; METHOD.KEY=VALUE for one of several methods")
    parser.add_argument("--seed", type=int, default=0, help="seed of the randomisation (default: 0)")
    parser.add_argument("--out", type=Path, default=Path("gradsight-out"), help="output folder")


def _write(out: Path, files: dict[str, bytes]) -> list[Path]:
    from ..rendering.files import make_output_folder, output_error, write_atomic

    make_output_folder(out)
    try:
        for name, data in files.items():
            write_atomic(out / name, data)
    except OSError as err:
        raise output_error(out, err) from None
    return [out / name for name in files]


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def run_sanity(args) -> int:
    from ..evaluation.sanity import sanity_check
    from ..models.registry import load_model
    from ..rendering.evaluation import sanity_figure, similarity_curves_figure

    methods = split_names(args.method)
    options = per_method(parse_options(args.option), methods)
    images = image_arguments(list(args.images)) or None
    model = load_model(args.model, weights=args.weights)
    blocks = split_names(args.blocks) if args.blocks else None
    with warnings.catch_warnings():  # the kept parameters are printed below, as a line of the summary
        warnings.filterwarnings("ignore", message="gradsight sanity_check", category=UserWarning)
        report = sanity_check(model, images, methods=methods, order=args.order, blocks=blocks,
                              seed=args.seed, method_options=options)
    print(f"model {report.model_name}: {len(report.blocks)} blocks randomised ({report.order}), seed {args.seed}")
    for method, depends in report.verdicts().items():
        final = report.mean_similarity(method)
        print(f"  {method:22s} mean rank correlation of |map| over the randomisation: {final:+.3f} -> "
              + ("depends on the weights" if depends else "barely changes: it does NOT pass"))
    print(f"  (passes when below {report.threshold:g})")
    if report.kept:
        print(f"  not randomised: {report.kept_note(limit=8)}")
    files = {"sanity.json": (json.dumps(report.as_dict(), indent=2) + "\n").encode(),
             "sanity_maps.png": _png(sanity_figure(report)),
             "sanity_curves.png": _png(similarity_curves_figure(report))}
    written = _write(args.out, files)
    print(f"wrote {', '.join(p.name for p in written)} to {args.out}/")
    return 0


def run_faithfulness(args) -> int:
    from ..errors import BadInputError
    from ..evaluation.faithfulness import METRICS, faithfulness
    from ..models.registry import load_model
    from ..rendering.evaluation import faithfulness_figure

    methods = split_names(args.method)
    metrics = split_names(args.metric)
    for metric in metrics:
        if metric not in METRICS:
            raise BadInputError("--metric", expected=f"{' or '.join(METRICS)} (comma-separated)", got=repr(metric))
    options = per_method(parse_options(args.option), methods)
    images = image_arguments(list(args.images)) or None
    model = load_model(args.model, weights=args.weights)
    results = [faithfulness(model, images, method=m, metric=metric, steps=args.steps,
                            seed=args.seed, method_options=options[m]) for m in methods for metric in metrics]
    for r in results:
        for i in range(len(r.auc)):
            print(f"  {r.metric:9s} {r.method:22s} image {i}: AUC {r.auc[i]:.4f}   random order {r.random_auc[i]:.4f}"
                  + ("   better than random" if r.better_than_random()[i] else "   NOT better than random"))
    files = {"faithfulness.json": (json.dumps([r.as_dict() for r in results], indent=2) + "\n").encode(),
             "faithfulness.png": _png(faithfulness_figure(results))}
    written = _write(args.out, files)
    print(f"wrote {', '.join(p.name for p in written)} to {args.out}/")
    return 0
