"""Where to crop so that one unit is computed on only what it can see (its cone), exactly.

Example:
    >>> import gradsight                                                      # doctest: +SKIP
    >>> report = gradsight.receptive_field("resnet50", (224, 224))            # doctest: +SKIP
    >>> plan = crop_plan(report, report["layer3"], (7, 7))                    # doctest: +SKIP
    >>> [(step.layer, step.window) for step in plan.steps][-1]                # doctest: +SKIP
    ('layer3.4', ((6, 9), (6, 9)))

A plan crops the model input to the unit's window, then — at cuts, outputs that every path to the unit runs
through — earlier layers' outputs to the unit's field on their own grid. Every window starts on the grid of
the strides still to come and keeps the full length modulo them, so 'same' paddings and the unit's position
are as on the full input and the result is exact. The adapters apply plans (PyTorch: forward hooks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .report import LayerField


def crop_window(field: LayerField, unit: tuple[int, int]) -> tuple[tuple[int, int], ...] | None:
    """Input window [start, end) per axis that reproduces ``unit`` exactly, or None to use the whole input.

    The window starts at a multiple of the effective stride S (so the unit grid stays aligned) and its length
    is congruent to the input length modulo S (so 'same' paddings, which depend on the size, do not change).
    """
    axes = _single_axes(field)
    if axes is None:
        return None
    return _window(field.rect(unit), [a.stride for a in axes], field.input_size, 0.5)


def _single_axes(field: LayerField):
    if field.field.axes is None or not field.aligned or any(len(c) != 1 for c in field.field.axes):
        return None
    return [comps[0] for comps in field.field.axes]


def _window(rect, strides, sizes, worth: float) -> tuple[tuple[int, int], ...] | None:
    window = []
    for (first, last), stride, length in zip(rect, strides, sizes):
        start = (first // stride) * stride
        span = last + 1 - start
        span += (length - start - span) % stride
        window.append((start, start + span))
    if math.prod(b - a for a, b in window) > worth * math.prod(sizes):
        return None  # not worth it
    return tuple(window)


MIN_CROPPED_VALUES = 2 ** 14  # an intermediate crop must remove at least this many values to pay for itself


@dataclass(frozen=True)
class CropStep:
    """Crop the output of ``layer`` (None: the model input) to ``window`` ([start, end) per axis, in that
    tensor's own full-size coordinates); ``stride`` is that tensor's effective stride on the input."""

    layer: str | None
    window: tuple[tuple[int, int], ...]
    stride: tuple[int, ...]
    axes: tuple[int, ...] | None = None  # the tensor's spatial axes after the batch axis (None: the last ones)


@dataclass(frozen=True)
class CropPlan:
    """The crops for one unit, in running order (the model input first), and the unit's layer's stride."""

    steps: tuple[CropStep, ...]
    stride: tuple[int, ...]

    @property
    def input_window(self) -> tuple[tuple[int, int], ...]:
        return self.steps[0].window

    def unit_offset(self) -> tuple[int, ...]:
        """How far the layer's grid is shifted when only the input is cropped: unit u becomes u - offset."""
        return tuple(a // s for (a, _), s in zip(self.input_window, self.stride))


_CUTS: dict[tuple[int, str], tuple] = {}  # (id(report), layer) -> (report, cuts); holding report keeps the id


def _cuts(report, field: LayerField) -> list:
    """(earlier layer, the AxisFields of ``field``'s units on its grid, its effective strides) for the cuts
    crop_plan may use."""
    key = (id(report), field.name)
    hit = _CUTS.get(key)
    if hit is not None and hit[0] is report:
        return hit[1]
    axes = _single_axes(field)
    parts = field.name.split(".")
    parents = {"", field.name} | {".".join(parts[:i]) for i in range(1, len(parts))}
    cuts = []
    for earlier in report.layers:
        if earlier.seq >= field.seq:
            break
        parent = earlier.name.rpartition(".")[0] if "." in earlier.name else ""
        if parent not in parents or not report.is_cut(earlier, field):
            continue
        mine = _single_axes(earlier)
        if mine is None or len(earlier.spatial_shape) != len(axes):
            continue
        relative = [a.after(b) for a, b in zip(axes, mine)]
        if all(r is not None for r in relative):
            cuts.append((earlier, relative, tuple(b.stride for b in mine)))
    if len(_CUTS) > 256:
        _CUTS.clear()
    _CUTS[key] = (report, cuts)
    return cuts


def crop_plan(report, field: LayerField, unit: tuple[int, int], cuts: bool = True) -> CropPlan | None:
    """Where to crop to compute ``unit`` of ``field``'s layer on only what it can see: the input window of
    :func:`crop_window`, then (with ``cuts``) the outputs of earlier layers that every path to the unit runs
    through, each cropped to the unit's field on that layer's grid. None when nothing is worth cropping.

    Cuts are taken among the children of the unit's layer and of its containers (``layer1``, ``layer3.0``
    and ``layer3.1.conv1`` for ``layer3.1.conv2``, say): one crop per stage, not one per module. Batches of
    units take ``cuts=False``: their windows are stacked, and deeper crops would differ from unit to unit.
    """
    axes = _single_axes(field)
    if axes is None or not report.translation_equivariant(field):
        return None
    window = crop_window(field, unit)
    whole = window is None
    if whole:  # the field covers most of the input, but deeper layers may still be worth cropping
        window = tuple((0, n) for n in field.input_size)
    steps = [CropStep(None, window, (1,) * len(axes))]
    for earlier, relative, strides in _cuts(report, field) if cuts else ():
        shape = earlier.spatial_shape
        rect = tuple(r.span(u, n) for r, u, n in zip(relative, unit, shape))
        cut = _window(rect, [r.stride for r in relative], shape, 0.75)
        # A crop that removes little costs more (a hook, a slice and its backward) than it saves.
        if cut is not None:
            removed = math.prod(_arriving(steps[-1], strides, shape)) - math.prod(b - a for a, b in cut)
            if earlier.channels * removed >= MIN_CROPPED_VALUES:
                steps.append(CropStep(earlier.name, cut, strides, earlier.spatial_axes))
    if whole and len(steps) == 1:
        return None
    return CropPlan(tuple(steps), tuple(a.stride for a in axes))


def _arriving(last: CropStep, strides, shape) -> list[int]:
    """Size per axis of what reaches a layer of ``strides`` and full ``shape`` after the crop ``last``."""
    return [min(n, -(-(b - a) * s0 // s)) for (a, b), s0, s, n in zip(last.window, last.stride, strides, shape)]
