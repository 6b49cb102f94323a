"""``gradsight attribute`` on image files: ``gradsight.attribute`` per method, chunk by chunk, then the
pictures and files of ``save_attributions``.

Example:
    >>> run_files(["photo.jpg"], "out/", methods="gradient,grad_cam")    # doctest: +SKIP
    model: efficientnet_lite0 (...)
    ...
    wrote 9 files to out/

Per image and method ``<stem>_<method>.png``, ``.npy`` (the displayed map, float32), ``.json`` (every effective
option, the prediction, the method's per-image diagnostics), ``<stem>_<method>_layer.npy`` for CAM methods,
and with several methods ``<stem>_methods.png`` (the photo, then one panel per method). Every option is
checked, and every method run once on a blank input, before any file is read or written; files are read
``batch_size`` at a time, so memory does not grow with the number of files; each output is written
atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import BadInputError
from .compute import check_methods, parse_methods, run_options, split_run_options
from .model import resolve_model


def _check_out(out: Path) -> None:
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not existing.is_dir():  # the folder itself, or one it would be created in, is a file
        raise BadInputError(f"output folder {str(out)!r}", expected="a folder that can be created and written",
                            got=f"{str(existing)!r} is a file", fix="choose another --out folder")


def _file_names(results, stem: str) -> set[str]:
    names = {f"{stem}_{r.method}{suffix}" for r in results for suffix in (".png", ".npy", ".json")}
    names |= {f"{stem}_{r.method}_layer.npy" for r in results if r.layer_maps is not None}
    return names | ({f"{stem}_methods.png"} if len(results) > 1 else set())


def _report(results, i: int, written: list[Path]) -> str:
    """What the terminal shows for one image: source, notes, top-5, what was explained, diagnostics, files."""
    first = results[0]
    lines = first.summary_lines(i)
    target = int(first.targets[i])
    methods = ", ".join(r.method for r in results)
    lines.append(f"  explained: {first.score}[{target}] ({first.label(target)}) by {methods}")
    for r in results:
        if r.per_image:
            values = ", ".join(f"{k} {float(v[i]):+.4g}" for k, v in r.per_image.items())
            lines.append(f"  {r.method}: {values}")
    lines.append("  wrote " + ", ".join(p.name for p in written))
    return "\n".join(lines)


def run_files(images, out, *, model="efficientnet_lite0", weights=None, methods="gradient", options=None,
              batch_size: int = 8, download: bool = False) -> int:
    """Maps of ``images`` (paths, '-' for standard input; none: the bundled photo) by each of ``methods`` into
    ``out``; prints what each image is and what was explained. Returns the exit status (0)."""
    from tqdm.auto import tqdm

    from ..commands.options import image_arguments
    from ..images import Photo, example_image_path, load_image
    from ..methods.attribute import attribute
    from ..rendering.attribution import save_attributions
    from ..rendering.files import output_stems

    names = parse_methods(methods)
    run_options(names, options)  # names and values of the options, before any file is read
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadInputError("--batch-size", expected="a whole number >= 1", got=repr(batch_size))
    out = Path(out)
    items = image_arguments([Path(p) for p in images]) if images else [example_image_path()]
    _check_out(out)
    loaded, _ = resolve_model(model, weights, download=download)
    per_method = run_options(names, options, check_methods(loaded, names, run_options(names, options)))
    stems = output_stems([item.source if isinstance(item, Photo) else str(item) for item in items])
    print(f"model: {loaded.name} ({loaded.spec.weights})")
    count = 0
    bar = tqdm(total=len(items), desc="attribute", unit="image", file=sys.stderr, disable=None)
    try:
        for start in range(0, len(items), batch_size):
            # each photo is read once per chunk and shared by the methods; only this chunk is in memory
            chunk = [item if isinstance(item, Photo) else load_image(item) for item in items[start:start + batch_size]]
            results = []
            for name in names:
                run, own = split_run_options(per_method[name])
                bar.set_postfix_str(name)
                results.append(attribute(loaded, chunk, method=name, score=run["score"], fast=run["fast"],
                                         target=None if run["target"] == "auto" else run["target"],
                                         batch_size=batch_size, **own))
            chunk_stems = stems[start:start + batch_size]
            written = save_attributions(results, out, stems=chunk_stems)
            count += len(written)
            for i, stem in enumerate(chunk_stems):
                mine = _file_names(results, stem)
                bar.update(1)
                bar.write(_report(results, i, [p for p in written if p.name in mine]), file=sys.stdout)
    finally:
        bar.close()
    print(f"\nwrote {count} files to {out}/")
    return 0
