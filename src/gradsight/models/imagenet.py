"""ImageNet-1k class names, from timm's bundled metadata (WordNet lemmas), not a hand-typed list.

Example:
    >>> imagenet_class_names()[20]
    'water ouzel, dipper'
"""

from __future__ import annotations

from functools import cache

from ..errors import MissingDependencyError


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class descriptions in the standard index order."""
    try:
        from timm.data import ImageNetInfo
    except ImportError as err:
        raise MissingDependencyError(
            "ImageNet class names come from timm's metadata; install it with: pip install 'gradsight[torch]'"
        ) from err
    info = ImageNetInfo("imagenet-1k")
    return tuple(info.index_to_description(i) for i in range(1000))
