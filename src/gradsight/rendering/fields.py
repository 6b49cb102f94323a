"""Pictures of inner-node gradients with their analytic receptive field drawn on top.

Example:
    >>> import gradsight
    >>> g = gradsight.node_gradient("seed-cnn", "L6", (0, 0, 0))
    >>> figure = gradsight.node_gradient_figure(g)        # the exercise's gradient_L6.png
    >>> figure.savefig("gradient_L6.png")                 # doctest: +SKIP

Colour scale: |gradient| (summed over input channels) on a logarithmic scale spanning ``decades`` orders of
magnitude below the maximum, so tiny values stay visible; exact zeros get their own colour (blue), so "no
gradient at all" is never confused with "a very small one".
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..errors import BadInputError
from ..receptive.node_gradient import NodeGradients

ZERO_COLOUR = "#1f4e9c"


def _draw(ax, magnitude: np.ndarray, rect, decades: float, title: str):
    top = float(magnitude.max())
    cmap = colormaps["inferno"].with_extremes(under=ZERO_COLOUR, bad=ZERO_COLOUR)
    if top > 0:
        image = ax.imshow(np.ma.masked_equal(magnitude, 0.0), cmap=cmap,
                          norm=LogNorm(vmin=top * 10.0 ** -decades, vmax=top, clip=False), interpolation="nearest")
    else:
        image = ax.imshow(np.zeros_like(magnitude), cmap=cmap, vmin=1, vmax=2, interpolation="nearest")
        title += "  (dead unit: gradient is zero everywhere)"
    (r0, r1), (c0, c1) = rect
    if r0 <= r1 and c0 <= c1:
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0 + 1, r1 - r0 + 1, fill=False, edgecolor="#00e5ff",
                               linewidth=1.2, linestyle="--"))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("column (y)")
    ax.set_ylabel("row (x)")
    return image


def node_gradient_figure(result: NodeGradients, i: int = 0, decades: float = 6.0, model_name: str = "") -> Figure:
    """|d z[x, y, c] / d input| of unit ``i`` with its analytic rectangle (dashed cyan)."""
    unit = tuple(int(v) for v in result.units[i])
    rect = result.unit_rect(i)
    magnitude = np.abs(result.gradients[i]).sum(axis=-1)
    fig = Figure(figsize=(6.2, 5.4), layout="constrained")
    ax = fig.subplots()
    if rect is None:
        where = "no analytic field (the trace cannot follow this layer)"
    else:
        (r0, r1), (c0, c1) = rect
        where = f"analytic field rows {r0}..{r1}, cols {c0}..{c1} ({r1 - r0 + 1} x {c1 - c0 + 1} after clipping)"
    title = f"|d {result.layer}[x={unit[0]}, y={unit[1]}, c={unit[2]}] / d input|  {model_name}\n{where}"
    image = _draw(ax, magnitude, rect, decades, title)
    fig.colorbar(image, ax=ax, label="log scale; blue = exactly 0", shrink=0.85)
    return fig


def field_grid_figure(results: list[NodeGradients], decades: float = 6.0, title: str = "",
                      margin: int = 6) -> Figure:
    """One panel per layer (e.g. L1..L6), each a unit's gradient with its analytic rectangle. All panels show
    the same window: the largest rectangle plus ``margin`` pixels, so the growth from layer to layer shows."""
    cols = min(3, len(results))
    rows = (len(results) + cols - 1) // cols
    fig = Figure(figsize=(4.0 * cols, 3.9 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    rects = [r.unit_rect(0) for r in results]
    if any(rect is None for rect in rects):
        raise BadInputError("layers", expected="layers with an analytic field", got="a layer the trace cannot "
                            "follow", fix="draw its gradient alone with node_gradient_figure")
    height, width = results[0].gradient.shape[:2]
    row_lo = max(min(rect[0][0] for rect in rects) - margin, 0)
    row_hi = min(max(rect[0][1] for rect in rects) + margin, height - 1)
    col_lo = max(min(rect[1][0] for rect in rects) - margin, 0)
    col_hi = min(max(rect[1][1] for rect in rects) + margin, width - 1)
    image = None
    for ax, result, rect in zip(axes, results, rects):
        unit = tuple(int(v) for v in result.units[0])
        (r0, r1), (c0, c1) = rect
        image = _draw(ax, np.abs(result.gradient).sum(axis=-1), rect, decades,
                      f"{result.layer}[{unit[0]}, {unit[1]}, c={unit[2]}]: {r1 - r0 + 1} x {c1 - c0 + 1}")
        ax.set_xlim(col_lo - 0.5, col_hi + 0.5)
        ax.set_ylim(row_hi + 0.5, row_lo - 0.5)
    for ax in axes[len(results):]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=list(axes[:len(results)]), label="|gradient|, log scale; blue = exactly 0",
                     shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig
