"""Frozen result objects holding raw values; normalising for display is the plotting code's job.

``AttributionResult`` is what every attribution method returns; ``SaliencyResult`` (``gradsight.saliency``) is
the AttributionResult of the ``gradient`` method, with ``.saliency`` and ``.gradient`` as names of its maps.

Example:
    >>> import gradsight                                          # doctest: +SKIP
    >>> result = gradsight.saliency("efficientnet_lite0")         # the bundled ouzel.png  # doctest: +SKIP
    >>> result.top_k(0, 1)                                        # doctest: +SKIP
    [(20, 'water ouzel, dipper', 0.959...)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .preprocess import Geometry, Preprocess


class ClassScores:
    """What every result derives from its ``logits`` (N, K) and ``class_names``: probabilities, top-k, labels."""

    logits: np.ndarray
    class_names: tuple[str, ...] | None

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits, (N, K), computed in float64 for stability."""
        z = self.logits.astype(np.float64)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def prediction_probabilities(self) -> np.ndarray:
        probs = self.probabilities
        return probs[np.arange(len(probs)), self.predictions]

    def label(self, index: int) -> str:
        """Human-readable name of class ``index`` (the index itself when the model has no names)."""
        if self.class_names is None or not 0 <= index < len(self.class_names):
            return f"class {index}"
        return self.class_names[index]

    def top_k(self, i: int, k: int = 5) -> list[tuple[int, str, float]]:
        """The k most probable classes of input ``i`` as (index, name, probability)."""
        probs = self.probabilities[i]
        order = np.argsort(-probs, kind="stable")[:k]
        return [(int(c), self.label(int(c)), float(probs[c])) for c in order]


@dataclass(frozen=True, eq=False)
class AttributionResult(ClassScores):
    """One attribution method's maps for a batch of N inputs, all in model-input pixels.

    ``maps`` (N, H, W) is what is displayed; ``attribution`` (N, H, W, C) the raw per-channel values of pixel
    methods (None otherwise); ``layer_maps`` (N, h, w) a CAM method's map at its layer's resolution.
    ``method`` and ``options`` (every effective option, defaults included) say exactly what was computed;
    ``per_image`` holds named per-input values: diagnostics (Integrated Gradients' completeness gap) and options that
    differ per input (SmoothGrad's sigma).
    """

    maps: np.ndarray
    method: str
    options: dict
    targets: np.ndarray
    score: str
    logits: np.ndarray
    model_name: str
    framework: str
    attribution: np.ndarray | None = None
    layer_maps: np.ndarray | None = None
    per_image: dict = field(default_factory=dict)
    display: str = "max_abs"
    class_names: tuple[str, ...] | None = None
    preprocess: Preprocess | None = None
    sources: tuple[str | None, ...] = ()
    geometries: tuple[Geometry | None, ...] = ()
    conversions: tuple[str | None, ...] = ()
    fast: bool = True
    photos: tuple = field(default=(), repr=False)  # RGB copies for display, longest side <= 1024 (None: arrays)
    input_kinds: tuple[str, ...] = ()  # "photo" or "model_input", per input
    orientations: tuple[str | None, ...] = ()  # the EXIF orientation applied to each photo, if any

    def __len__(self) -> int:
        return len(self.maps)

    def summary_lines(self, i: int, k: int = 5) -> list[str]:
        """What a terminal shows first for input ``i``: its source, how it was read, and its top-``k`` classes."""
        lines = [f"\n{self.sources[i]}"]
        for note in (self.conversions[i], self.orientations[i] if i < len(self.orientations) else None):
            if note:
                lines.append(f"  read as: {note}")
        for rank, (cls, name, prob) in enumerate(self.top_k(i, k), start=1):
            lines.append(f"  {rank}. {cls:4d}  {prob:7.4f}  {name}")
        return lines

    def on_original(self, i: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """The map of input ``i`` resampled onto its original photo (pixels outside the crop are 0), at the
        photo's full size or at ``size`` = (width, height), e.g. that of the display copy in ``photos``."""
        geometry = self.geometries[i] if i < len(self.geometries) else None
        if geometry is None or self.preprocess is None:
            return self.maps[i]
        return self.preprocess.to_original(self.maps[i], geometry.original_size, size)


@dataclass(frozen=True, eq=False, kw_only=True)
class SaliencyResult(AttributionResult):
    """Vanilla-gradient saliency for a batch of N inputs: the AttributionResult of the ``gradient`` method.

    ``saliency`` (N, H, W) is ``maps``, max over colour channels of ``|gradient|``; ``gradient`` (N, H, W, C) is
    ``attribution``, d score / d input, channels last. ``score`` and ``fast`` say what was differentiated and
    how; ``options`` are the gradient method's (it has none). ``targets`` are the explained classes,
    ``predictions`` the top-1 classes with their softmax ``probabilities``; ``logits`` (N, K) are the raw scores.
    Every renderer of attributions takes it (``save_attributions``, ``attribution_figure``), and so do
    ``save_saliency`` and ``saliency_figure``.
    """

    method: str = "gradient"
    options: dict = field(default_factory=dict)
    display: str = "max_abs"

    @property
    def saliency(self) -> np.ndarray:
        return self.maps

    @property
    def gradient(self) -> np.ndarray:
        return self.attribution
