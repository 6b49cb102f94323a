"""Pictures the explorer sends: model inputs, unit gradients on a log scale, saliency maps, and the exported view.

Example:
    >>> import numpy as np
    >>> gradient = np.zeros((4, 4, 1), np.float32); gradient[1, 2] = 1e-3; gradient[2, 2] = 1e-12
    >>> rgb = gradient_rgb(gradient)
    >>> tuple(rgb[0, 0]) == ZERO_RGB, tuple(rgb[2, 2]) == tuple(LUT[0]), tuple(rgb[1, 2]) == tuple(LUT[-1])
    (True, True, True)

Gradient pictures use the same scale as ``gradsight.node_gradient_figure``: |gradient| summed over input
channels, logarithmic over ``decades`` orders of magnitude below the maximum; exact zeros get their own colour
(blue) and values below the scale its darkest colour, so "no gradient at all" is never confused with "a tiny one".
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DECADES = 6.0
ZERO_RGB = (31, 78, 156)  # #1f4e9c, as in gradsight's node-gradient figures
ANALYTIC_RGB = (0, 229, 255)
SUPPORT_RGB = (255, 64, 160)


def _lut() -> np.ndarray:
    from matplotlib import colormaps

    return np.rint(colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


LUT = _lut()


def png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 picture (fast compression: these are sent at every click)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def gradient_rgb(gradient: np.ndarray, decades: float = DECADES) -> np.ndarray:
    """(H, W, 3) uint8: log10 |gradient| (summed over channels) mapped to inferno; exact zeros blue."""
    magnitude = np.abs(gradient.astype(np.float64)).sum(axis=-1)
    out = np.empty((*magnitude.shape, 3), np.uint8)
    out[:] = ZERO_RGB
    top = float(magnitude.max())
    if top > 0:
        nonzero = magnitude > 0
        level = (np.log10(magnitude[nonzero] / top) + decades) / decades
        out[nonzero] = LUT[np.clip(np.rint(level * 255), 0, 255).astype(np.intp)]
    return out


def saliency_rgb(saliency: np.ndarray, display: str = "max_abs") -> np.ndarray:
    """(H, W, 3) uint8. Non-negative maps (saliency, CAMs): grey round(clip(map / p99, 0, 1) * 255), the scale
    of ``gradsight saliency``'s PNG. Signed maps (``display="sum"``: Integrated Gradients, input x gradient):
    blue (negative) - white (0) - red (positive), scaled by the 99th percentile of |map|."""
    signed = display == "sum"
    top = float(np.percentile(np.abs(saliency) if signed else saliency, 99))
    scaled = np.clip(saliency / top, -1, 1) if top > 0 else np.zeros_like(saliency)
    if not signed:
        grey = np.rint(np.clip(scaled, 0, 1) * 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    positive, negative = np.clip(scaled, 0, 1)[..., None], np.clip(-scaled, 0, 1)[..., None]
    white = np.ones((*scaled.shape, 3))
    rgb = white - positive * np.array([0.0, 1.0, 1.0]) - negative * np.array([1.0, 1.0, 0.0])
    return np.rint(rgb * 255).astype(np.uint8)


def _dashed(draw: ImageDraw.ImageDraw, box, colour, dash: int = 6, width: int = 2):
    """A dashed outline drawn inside ``box`` (x0, y0, x1, y1 inclusive), like ``rectangle(outline=...)``."""
    x0, y0, x1, y1 = (int(v) for v in box)
    for inset in range(width):
        for start in range(x0, x1 + 1, 2 * dash):
            stop = min(start + dash - 1, x1)
            draw.line([(start, y0 + inset), (stop, y0 + inset)], fill=colour)
            draw.line([(start, y1 - inset), (stop, y1 - inset)], fill=colour)
        for start in range(y0, y1 + 1, 2 * dash):
            stop = min(start + dash - 1, y1)
            draw.line([(x0 + inset, start), (x0 + inset, stop)], fill=colour)
            draw.line([(x1 - inset, start), (x1 - inset, stop)], fill=colour)


def _panel(rgb: np.ndarray, scale: int, margin: int, rects) -> Image.Image:
    """The picture enlarged ``scale`` times on a grey margin, with (rect, colour, dashed) outlines drawn on
    pixel edges: rows r0..r1 span [r0 * scale, (r1 + 1) * scale - 1] plus the margin."""
    height, width = rgb.shape[:2]
    canvas = Image.new("RGB", ((width + 2 * margin) * scale, (height + 2 * margin) * scale), (64, 64, 64))
    canvas.paste(Image.fromarray(rgb).resize((width * scale, height * scale), Image.Resampling.NEAREST),
                 (margin * scale, margin * scale))
    draw = ImageDraw.Draw(canvas)
    for rect, colour, dashed, width in rects:
        if rect is None:
            continue
        (r0, r1), (c0, c1) = rect
        box = ((c0 + margin) * scale, (r0 + margin) * scale, (c1 + 1 + margin) * scale - 1,
               (r1 + 1 + margin) * scale - 1)
        if dashed:
            _dashed(draw, box, colour)
        else:
            draw.rectangle(box, outline=colour, width=width)
    return canvas


def export_png(display: np.ndarray, gradient: np.ndarray, rect, unclipped, support, lines: list[str],
               saliency: np.ndarray | None = None, margin: int = 0) -> bytes:
    """The view as one PNG: input | unit gradient (| the attribution map, ``saliency`` as RGB), rectangles
    drawn, the numbers written above."""
    height, width = display.shape[:2]
    scale = max(1, -(-384 // max(height + 2 * margin, width + 2 * margin)))
    # The support is drawn thinner on top of the analytic rectangle, so both show where they coincide.
    marks = [(unclipped, ANALYTIC_RGB, True, 2), (rect, ANALYTIC_RGB, False, 3), (support, SUPPORT_RGB, False, 1)]
    panels = [_panel(display, scale, margin, marks), _panel(gradient_rgb(gradient), scale, margin, marks)]
    if saliency is not None:
        panels.append(_panel(saliency, scale, margin, []))
    font = ImageFont.load_default()
    text_height = 16 * len(lines) + 12
    gap = 12
    total = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) + 1),
                              max(p.height for p in panels) + text_height + gap), (255, 255, 255))
    draw = ImageDraw.Draw(total)
    for i, line in enumerate(lines):
        # Pillow's built-in font has no dashes beyond ASCII.
        draw.text((gap, 6 + 16 * i), line.replace("\u2014", "-").replace("\u2013", "-"), fill=(0, 0, 0), font=font)
    x = gap
    for panel in panels:
        total.paste(panel, (x, text_height))
        x += panel.width + gap
    buffer = io.BytesIO()
    total.save(buffer, format="PNG")
    return buffer.getvalue()

