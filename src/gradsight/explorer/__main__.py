"""``python -m gradsight.explorer [IMAGE...] [--model NAME] [--port N] [--host H] [--no-browser]``.

Example:
    $ python -m gradsight.explorer --no-browser --port 0
    gradsight explore: http://127.0.0.1:41235/  (Ctrl+C to stop)

The same as ``gradsight explore``; user errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import GradsightError
from .cli import add_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradsight.explorer")
    args = parser.parse_args(["explore", *(sys.argv[1:] if argv is None else argv)]
                             if add_parser(parser.add_subparsers(dest="command")) else None)
    try:
        return args.run(args)
    except GradsightError as err:
        print(f"gradsight: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
