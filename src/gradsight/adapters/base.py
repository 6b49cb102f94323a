"""What every adapter shares and that needs no framework: the pass result and target resolution."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadInputError


@dataclass(frozen=True)
class ScoreGradient:
    """What one gradient pass returns: raw scores, the chosen targets and d(score)/d(input), channels last."""

    logits: np.ndarray  # (N, K)
    targets: np.ndarray  # (N,)
    gradient: np.ndarray  # (N, H, W, C)


def resolve_targets(targets: list[int | None], num_classes: int, logits: np.ndarray | None = None) -> list[int]:
    """Check every target is in 0..num_classes-1; None becomes the predicted class (needs ``logits``)."""
    chosen = []
    for i, target in enumerate(targets):
        if target is None:
            chosen.append(int(np.argmax(logits[i])) if logits is not None else -1)
        elif not 0 <= target < num_classes:
            raise BadInputError("target class", expected=f"an index in 0..{num_classes - 1}", got=str(target),
                                fix="pass a class index the model has, or 'auto' for the predicted class")
        else:
            chosen.append(int(target))
    return chosen
