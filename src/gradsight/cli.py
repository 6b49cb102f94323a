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
    return parser


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
