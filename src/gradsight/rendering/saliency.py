"""Pictures of saliency maps: 8-bit greyscale and the photo | saliency | overlay figure.

Example:
    >>> import numpy as np
    >>> to_uint8(np.array([[0.0, 1.0], [2.0, 400.0]]), percentile=50).tolist()
    [[0, 170], [255, 255]]

Display normalisation (``to_uint8``): ``clip(map / p, 0, 1) * 255`` rounded, where ``p`` is the map's
``percentile``-th percentile (99 by default), so a few extreme pixels do not turn the rest black. Results
keep raw values; only pictures are normalised.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..results import SaliencyResult

DEFAULT_PERCENTILE = 99.0


def normalise(values: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """``clip(values / percentile_value, 0, 1)`` as float32; all zeros stay zeros."""
    top = float(np.percentile(values, percentile))
    if top <= 0:
        top = float(values.max())
    if top <= 0:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip(values / top, 0.0, 1.0).astype(np.float32)


def to_uint8(values: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """8-bit greyscale of a non-negative map (see the module docstring for the formula)."""
    return np.rint(normalise(values, percentile) * 255.0).astype(np.uint8)


def saliency_figure(result: SaliencyResult, i: int = 0, percentile: float = DEFAULT_PERCENTILE) -> Figure:
    """Photo | saliency | overlay for input ``i``, titled with the predicted label and its probability.

    The photo is the result's display copy (longest side at most 1024 pixels), and the map is resampled onto
    that copy, so a huge photo costs no more memory than a small one.
    """
    photo = result.photos[i] if i < len(result.photos) else None
    sal = normalise(result.on_original(i, photo.size) if photo is not None else result.saliency[i], percentile)
    predicted = int(result.predictions[i])
    target = int(result.targets[i])
    fig = Figure(figsize=(13, 4.3), layout="constrained")
    axes = fig.subplots(1, 3)
    if photo is not None:
        axes[0].imshow(photo)
        geometry = result.geometries[i]
        scale_x, scale_y = (shown / full for shown, full in zip(photo.size, geometry.original_size))
        left, top, right, bottom = geometry.crop_box_on_original()
        left, right, top, bottom = left * scale_x, right * scale_x, top * scale_y, bottom * scale_y
        # box edges, not pixel centres: pixel k covers k - 0.5 .. k + 0.5 in imshow's coordinates
        axes[0].add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                    edgecolor="yellow", linestyle="--", linewidth=1.2))
        axes[0].set_title("photo (dashed: what the model sees)")
        axes[2].imshow(photo)
    else:
        axes[0].text(0.5, 0.5, "model input given as an array", ha="center", va="center")
        axes[2].imshow(np.zeros_like(sal), cmap="gray")
    axes[1].imshow(sal, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title(f"saliency: max over RGB of |d {result.score} / d input|")
    axes[2].imshow(sal, cmap="inferno", alpha=sal, vmin=0, vmax=1)
    axes[2].set_title("overlay")
    for ax in axes:
        ax.set_axis_off()
    prob = float(result.prediction_probabilities[i])
    title = f"predicted: {result.label(predicted)} ({predicted}), p = {prob:.3f}"
    if target != predicted:
        title += f"   |   explained: {result.label(target)} ({target})"
    fig.suptitle(f"{title}\nmodel {result.model_name}; display clipped at the {percentile:g}th percentile")
    return fig
