"""Parsing what the command line says about methods: names lists and ``--option KEY=VALUE`` pairs.

Example:
    >>> parse_options(["n_steps=64", "rule=riemann_middle", "smoothgrad.stdev=0.1"])
    {'n_steps': 64, 'rule': 'riemann_middle', 'smoothgrad.stdev': 0.1}
    >>> per_method({"n_steps": 8, "smoothgrad.seed": 1}, ["integrated_gradients", "smoothgrad"])
    {'integrated_gradients': {'n_steps': 8}, 'smoothgrad': {'seed': 1}}
"""

from __future__ import annotations

import ast
import difflib
import sys
from pathlib import Path

from ..errors import BadInputError


def parse_value(text: str):
    """A Python literal when the text is one (numbers, None, True, lists), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_options(pairs: list[str] | None) -> dict:
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInputError("--option", expected="KEY=VALUE (e.g. n_steps=64)", got=repr(pair))
        options[key.strip()] = parse_value(value.strip())
    return options


def per_method(options: dict, methods: list[str], common: tuple[str, ...] = ()) -> dict[str, dict]:
    """Each method's options: 'KEY' goes to every listed method that takes it, 'METHOD.KEY' to that method.

    ``common``: keys every method takes besides its own (a dataset run's score, target and fast). An option no
    listed method takes is refused, with the closest name when there is one (with one method and no close
    common key, the method's own message names its options).
    """
    from ..methods.registry import get_method

    takes = {m: get_method(m).options for m in methods}
    chosen: dict[str, dict] = {m: {} for m in methods}
    for key, value in options.items():
        owner, _, name = key.rpartition(".")
        if owner:
            if owner not in methods:
                raise BadInputError(f"--option {key}", expected=f"METHOD.KEY with METHOD one of {', '.join(methods)}",
                                    got=repr(owner))
            chosen[owner][name] = value
            continue
        users = [m for m in methods if key in takes[m] or key in common]
        if not users:
            known = sorted({*common, *(k for m in methods for k in takes[m])})
            close = difflib.get_close_matches(key, known, n=1)
            if len(methods) == 1 and not (close and close[0] in common):
                users = methods  # the method's own message lists what it takes
            else:
                raise BadInputError(f"--option {key}", expected="an option of one of the methods: " + "; ".join(
                    f"{m}: {', '.join([*takes[m], *common]) or 'none'}" for m in methods), got=repr(key),
                    fix=f"did you mean {close[0]!r}?" if close else "see `gradsight methods`")
        for m in users:
            chosen[m][key] = value
    return chosen


def split_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise BadInputError("--method", expected="one or more method names separated by commas", got=repr(text))
    return names


def image_arguments(paths: list[Path]) -> list:
    """Every image argument checked (regular, readable, an image Pillow knows) before any model loads;
    '-' is read from standard input."""
    from ..images import check_image_path, load_image_bytes

    if sum(str(p) == "-" for p in paths) > 1:
        raise BadInputError("images", expected="'-' (standard input) at most once",
                            got=f"'-' {sum(str(p) == '-' for p in paths)} times",
                            fix="standard input can be read only once; save the other images to files")
    items = [p if str(p) == "-" else check_image_path(p) for p in paths]
    if Path("-") in items:
        if sys.stdin is None or sys.stdin.isatty():
            raise BadInputError("image '-'", expected="an image piped into standard input",
                                got="a terminal", fix="pipe a file in (gradsight saliency - < photo.jpg)")
        items[items.index(Path("-"))] = load_image_bytes(sys.stdin.buffer.read(), "<stdin>")
    return items
