"""Inner-node gradients: d z[x, y, c] / d input for units of any layer, computed on only what they can see.

Example:
    >>> import gradsight
    >>> g = gradsight.node_gradient("seed-cnn", "L6", (0, 0, 0))    # uniform [0, 1) input, seeded
    >>> g.gradient.shape, g.rect                                      # unit (0, 0) of L6 sees rows/cols 0..23
    ((128, 128, 1), ((0, 23), (0, 23)))

Units are (x, y, c) as in the exercise's z[x, y, c]: x indexes rows (the first spatial axis), y columns.
The model runs only up to the layer ("partial model"), and — when the unit's analytic receptive field is
smaller than the input — only on the input window that covers it, chosen so that every layer's padding is the
same as on the full input; the result equals the full computation (the tests check it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..adapters import adapter_for, is_framework_tensor, tensor_to_array
from ..errors import BadInputError
from ..receptive.report import LayerField
from .fields import as_network, input_shape_for, receptive_field


@dataclass(frozen=True, eq=False)
class NodeGradients:
    """Gradients of U units of one layer: ``gradients`` (U, H, W, C), ``units`` (U, 3) as (x, y, c)."""

    gradients: np.ndarray
    units: np.ndarray
    values: np.ndarray
    layer: str
    field: LayerField
    inputs: np.ndarray
    cropped: bool

    def __len__(self) -> int:
        return len(self.units)

    @property
    def gradient(self) -> np.ndarray:
        """The first (or only) unit's gradient, (H, W, C)."""
        return self.gradients[0]

    @property
    def rect(self) -> tuple[tuple[int, int], ...]:
        """The first unit's analytic input rectangle ((row0, row1), (col0, col1)), inclusive, clipped."""
        return self.field.rect(tuple(int(u) for u in self.units[0][:2]))

    def support_box(self, i: int = 0) -> tuple[tuple[int, int], ...] | None:
        """Bounding box of the non-zero gradient of unit ``i`` (None: a dead unit, all gradients zero)."""
        return support_box(np.abs(self.gradients[i]).sum(axis=-1))


def support_box(values: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """((row0, row1), (col0, col1)) of the non-zero entries of a 2-D map, inclusive; None if all are zero."""
    nonzero = np.nonzero(values)
    if len(nonzero[0]) == 0:
        return None
    return tuple((int(idx.min()), int(idx.max())) for idx in nonzero)


def default_inputs(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The exercise's input: uniform random in [0, 1), as (rows, cols, channels) float32."""
    channels, *size = shape
    return np.random.default_rng(seed).random((*size, channels), dtype=np.float32)


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


@dataclass(frozen=True)
class CropPlan:
    """The crops for one unit, in running order (the model input first), and the unit's layer's stride."""

    steps: tuple[CropStep, ...]
    stride: tuple[int, ...]


def input_plan(field: LayerField, unit: tuple[int, int]) -> CropPlan | None:
    """The input crop alone (as used for batches of units, which share no deeper crops), or None."""
    axes = _single_axes(field)
    window = None if axes is None else crop_window(field, unit)
    if window is None:
        return None
    return CropPlan((CropStep(None, window, (1,) * len(axes)),), tuple(a.stride for a in axes))


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


def crop_plan(report, field: LayerField, unit: tuple[int, int]) -> CropPlan | None:
    """Where to crop to compute ``unit`` of ``field``'s layer on only what it can see: the input window of
    :func:`crop_window`, then the outputs of earlier layers that every path to the unit runs through (cuts),
    each cropped to the unit's field on that layer's grid. None when nothing is worth cropping.

    Cuts are taken among the children of the unit's layer and of its containers (``layer1``, ``layer3.0``
    and ``layer3.1.conv1`` for ``layer3.1.conv2``, say): one crop per stage, not one per module.
    """
    axes = _single_axes(field)
    if axes is None:
        return None
    window = crop_window(field, unit)
    whole = window is None
    if whole:  # the field covers most of the input, but deeper layers may still be worth cropping
        window = tuple((0, n) for n in field.input_size)
    steps = [CropStep(None, window, (1,) * len(axes))]
    for earlier, relative, strides in _cuts(report, field):
        shape = earlier.spatial_shape
        rect = tuple(r.span(u, n) for r, u, n in zip(relative, unit, shape))
        cut = _window(rect, [r.stride for r in relative], shape, 0.75)
        # What arrives there was computed from the last crop; a crop that removes little costs more (a hook,
        # a slice and its backward) than it saves.
        last = steps[-1]
        arriving = [min(n, -(-(b - a) * s0 // s)) for (a, b), s0, s, n in zip(last.window, last.stride, strides,
                                                                              shape)]
        if cut is not None and earlier.output_shape[0] * (math.prod(arriving) - math.prod(
                b - a for a, b in cut)) >= MIN_CROPPED_VALUES:
            steps.append(CropStep(earlier.name, cut, strides))
    if whole and len(steps) == 1:
        return None
    return CropPlan(tuple(steps), tuple(a.stride for a in axes))


def _as_inputs(inputs, shape: tuple[int, ...], seed: int) -> np.ndarray:
    if inputs is None:
        return default_inputs(shape, seed)
    if is_framework_tensor(inputs):
        inputs = tensor_to_array(inputs)[0]
    array = np.asarray(inputs, dtype=np.float32)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise BadInputError("input", expected="one input (rows, cols, channels)", got=f"shape {array.shape}")
    if not np.isfinite(array).all():
        raise BadInputError("input", expected="finite values", got="NaN or infinite values")
    return array


def node_gradients(model: Any, layer: Any, units: Any = None, *, channel: int | None = None, inputs=None,
                   seed: int = 0, crop: bool = True, fast: bool = True, batch_size: int = 32) -> NodeGradients:
    """Gradients of many units of ``layer`` w.r.t. one input.

    ``units``: a list of (x, y, c); or None with ``channel=c`` for every position of channel c (channel 0
    when both are None). ``inputs``: (rows, cols, channels) array or tensor; default uniform [0, 1), ``seed``.
    ``crop``: run each unit only on the input window it sees (and, for a single unit, earlier layers only on
    the unit's field there; see :func:`crop_plan`); ``fast``: fold BatchNorm as for saliency.
    """
    network = as_network(model)
    adapter = adapter_for(network.module)
    array = _as_inputs(inputs, input_shape_for(network, None), seed)
    report = receptive_field(network, array.shape[:2])
    name, _ = adapter.resolve_layer(network.module, layer)
    field = report[name]
    channels = field.output_shape[0]
    if units is None:
        c = 0 if channel is None else int(channel)
        rows, cols = field.spatial_shape
        units = [(x, y, c) for x in range(rows) for y in range(cols)]
    table = np.asarray(units, dtype=np.int64).reshape(-1, 3)
    for x, y, c in table:
        field.check_unit((int(x), int(y)))
        if not 0 <= c < channels:
            raise BadInputError(f"channel of layer {name!r}", expected=f"0..{channels - 1}", got=str(int(c)))
    if not crop:
        grads, values = adapter.unit_gradients(network.module, name, table, array, None, batch_size, fast)
        return NodeGradients(grads, table, values, name, field, array, False)
    if len(table) == 1:
        plan = crop_plan(report, field, (int(table[0][0]), int(table[0][1])))
        grads, values = adapter.unit_gradients(network.module, name, table, array, plan, batch_size, fast)
        return NodeGradients(grads, table, values, name, field, array, plan is not None)
    # Many units: each runs on its own input window, and units whose windows have the same size share a batch.
    groups: dict[tuple | None, list[int]] = {}
    plans = [input_plan(field, (int(x), int(y))) for x, y, _ in table]
    for i, plan in enumerate(plans):
        key = None if plan is None else tuple(b - a for a, b in plan.steps[0].window)
        groups.setdefault(key, []).append(i)
    grads, values = None, np.zeros(len(table))
    for key, members in groups.items():
        chosen = None if key is None else [plans[i] for i in members]
        part, values[members] = adapter.unit_gradients(network.module, name, table[members], array, chosen,
                                                       batch_size, fast)
        grads = np.zeros((len(table), *part.shape[1:]), part.dtype) if grads is None else grads
        grads[members] = part
    return NodeGradients(grads, table, values, name, field, array, None not in groups)


def node_gradient(model: Any, layer: Any, unit: tuple[int, int, int], inputs=None, *, seed: int = 0,
                  crop: bool = True, fast: bool = True) -> NodeGradients:
    """d z[x, y, c] / d input for one unit (see the module docstring); ``.gradient`` is (H, W, C)."""
    if len(tuple(unit)) != 3:
        raise BadInputError("unit", expected="(x, y, c): row, column, channel", got=repr(unit))
    return node_gradients(model, layer, [tuple(unit)], inputs=inputs, seed=seed, crop=crop, fast=fast)
