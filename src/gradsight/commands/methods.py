"""``gradsight methods``: the attribution methods, what they run on, their options and their papers.

Example:
    $ gradsight methods
    $ gradsight methods --json
"""

from __future__ import annotations

import json


def add_parser(commands) -> None:
    parser = commands.add_parser("methods", help="list the attribution methods with their options",
                                 description="The attribution methods: name, kind, frameworks, options, paper.")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run_methods)


def run_methods(args) -> int:
    from ..methods.registry import list_methods

    methods = list_methods()
    if args.json:
        print(json.dumps(methods, indent=2, default=repr))
        return 0
    for m in methods:
        options = ", ".join(f"{k}={v!r}" for k, v in m["options"].items()) or "-"
        print(f"{m['name']:22s} {m['kind']:13s} {'/'.join(m['frameworks']):12s} {m['summary']}")
        print(f"{'':22s} options: {options}")
        print(f"{'':22s} {m['reference']}")
    return 0
