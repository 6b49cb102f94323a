"""The ``gradsight explore`` sub-command.

Example:
    $ gradsight explore                              # the named models, a random input and the bundled photo
    $ gradsight explore cat.jpg dog.png --model resnet50 --port 8765 --no-browser

Wired into ``gradsight``'s parser with ``add_parser(subparsers)``; image and model problems exit with status 2
before anything is served.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``explore`` to an ``add_subparsers()`` object; its ``run`` default takes the namespace, returns 0."""
    parser = subparsers.add_parser(
        "explore", help="a local web page: click a unit, see its gradient and receptive field",
        description="Serve the gradsight explorer on this machine (127.0.0.1 by default) and open it.")
    parser.add_argument("images", nargs="*", type=Path, help="photos to offer besides the bundled one")
    parser.add_argument("--model", help="a model offered first besides seed-cnn, seed-cnn-torch, efficientnet_lite0 "
                                        "and resnet50 (any name `gradsight saliency` or `gradsight rf` accepts)")
    parser.add_argument("--port", type=int, default=0, help="port (default: 0, any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--no-browser", action="store_true", help="print the URL without opening a browser")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import webbrowser

    from .server import start
    from .session import Session

    session = Session(args.model, list(args.images))  # bad photos fail here, before anything is served
    if args.model is not None:
        session.entry(session.default_model)  # and so does a model name that does not load
    handle = start(host=args.host, port=args.port, session=session)
    print(f"gradsight explore: {handle.url}  (Ctrl+C to stop)", flush=True)
    if not args.no_browser:
        webbrowser.open(handle.url)
    handle.wait()
    handle.stop()
    return 0
