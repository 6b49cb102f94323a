"""What both adapters share and that needs no framework: pass results, target and output checks, and
keeping the two frameworks importable side by side."""

from __future__ import annotations

import sys
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


def avoid_triton_tensorflow_clash(loading: str) -> None:
    """Keep PyTorch and TensorFlow usable in one process.

    Importing Triton (which torch._dynamo pulls in lazily, e.g. on a first F.pad) after TensorFlow has been
    loaded crashes the interpreter (seen with torch 2.14 + TensorFlow 2.21: both bundle LLVM). So: when
    TensorFlow is about to load and torch is already here, let torch finish its lazy import first; when torch
    code runs after TensorFlow, tell torch that Triton is absent (it is only needed to compile GPU kernels).
    """
    if loading == "tensorflow" and "torch" in sys.modules and "torch._dynamo" not in sys.modules:
        import torch._dynamo  # noqa: F401
    elif loading == "torch" and "tensorflow" in sys.modules and "torch._dynamo" not in sys.modules:
        sys.modules.setdefault("triton", None)


def support_weights(channels: int, seed: int) -> np.ndarray:
    """The positive channel weights w_c in [0.5, 1.5) of ``support_map``, drawn by NumPy so that one seed gives
    the same weights in every framework."""
    return (np.random.default_rng(seed).random(channels) + 0.5).astype(np.float32)
