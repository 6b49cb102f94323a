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


@dataclass(frozen=True)
class LayerGradient:
    """A named layer's activations A and d(score)/dA for a batch, channels last: what Grad-CAM needs."""

    activations: np.ndarray  # (N, h, w, c)
    gradient: np.ndarray  # (N, h, w, c)
    logits: np.ndarray  # (N, K)
    targets: np.ndarray  # (N,)


#: The rules of ``modified_copy``: how the copy's activations back-propagate, or which layers are re-drawn.
MODIFY_RULES = ("guided", "deconvnet", "linearised", "reinit")


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


def rows_are_probabilities(scores: np.ndarray, tolerance: float = 1e-4) -> bool:
    """True when every row of ``scores`` (N, K) looks like a probability distribution: values in [0, 1] that
    sum to 1. Such an output is most likely a softmax the adapter could not step over, so the 'logit'
    reading would be a mislabel.

    Example:
        >>> rows_are_probabilities(np.array([[0.2, 0.8], [0.5, 0.5]]))
        True
        >>> rows_are_probabilities(np.array([[2.0, -1.0]]))
        False
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        return False
    in_range = bool(((scores >= -tolerance) & (scores <= 1 + tolerance)).all())
    return in_range and bool(np.allclose(scores.sum(axis=1), 1.0, atol=tolerance * scores.shape[1]))
