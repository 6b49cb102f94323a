"""ImageNet-1k class names, from timm's bundled metadata (WordNet lemmas), not a hand-typed list.

Example:
    >>> imagenet_class_names()[20]
    'water ouzel, dipper'

The two files are read where timm installed them, without importing timm (and so torch): Keras users with
timm installed get the names without loading PyTorch.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from ..errors import MissingDependencyError


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class descriptions in the standard index order."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "ImageNet class names come from timm's metadata; install it with: pip install 'gradsight[torch]'")
    info = Path(spec.submodule_search_locations[0]) / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
                  if "\t" in line)
    if len(synsets) != 1000:
        raise MissingDependencyError(f"timm's ImageNet metadata looks damaged ({len(synsets)} synsets)")
    return tuple(lemmas[s].strip() for s in synsets)
