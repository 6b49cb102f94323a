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

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..adapters.discovery import adapter_for, is_framework_tensor, tensor_to_array
from ..errors import BadInputError, GradsightError, UnsupportedGeometryError
from ..models.registry import as_loaded_model
from .analytic import input_shape_for, receptive_field
from .cone import crop_plan
from .report import LayerField


@dataclass(frozen=True, eq=False)
class NodeGradients:
    """Gradients of U units of one layer: ``gradients`` (U, H, W, C), ``units`` (U, 3) as (x, y, c).

    ``field`` is None when the layer's analytic field is unknown (crop=False past an operation the trace
    cannot follow); ``rect`` is then None too — unknown, never a guess.
    """

    gradients: np.ndarray
    units: np.ndarray
    values: np.ndarray
    layer: str
    field: LayerField | None
    inputs: np.ndarray
    cropped: bool

    def __len__(self) -> int:
        return len(self.units)

    @property
    def gradient(self) -> np.ndarray:
        """The first (or only) unit's gradient, (H, W, C)."""
        return self.gradients[0]

    @property
    def rect(self) -> tuple[tuple[int, int], ...] | None:
        """The first unit's analytic input rectangle ((row0, row1), (col0, col1)), inclusive, clipped; None
        when the field is unknown."""
        return self.unit_rect(0)

    def unit_rect(self, i: int) -> tuple[tuple[int, int], ...] | None:
        """Unit ``i``'s analytic input rectangle, or None when the field is unknown."""
        if self.field is None:
            return None
        return self.field.rect(tuple(int(u) for u in self.units[i][:2]))

    def support_box(self, i: int = 0) -> tuple[tuple[int, int], ...] | None:
        """Bounding box of the non-zero gradient of unit ``i`` (None: a dead unit, all gradients zero)."""
        return support_box(np.abs(self.gradients[i]).sum(axis=-1))


def layout(field: LayerField | None) -> dict:
    """Keyword arguments telling an adapter which axes of a layer's output are the rows and columns, when
    they are not the last two (channels-last outputs, which only the PyTorch trace reports)."""
    return {} if field is None or field.spatial_axes is None else {"spatial_axes": field.spatial_axes}


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


MAX_RESULT_BYTES = 4 * 2 ** 30  # node_gradients refuses to return more float32 gradients than this


def node_gradients(model: Any, layer: Any, units: Any = None, *, channel: int | None = None, inputs=None,
                   seed: int = 0, crop: bool = True, fast: bool = True, batch_size: int = 32) -> NodeGradients:
    """Gradients of many units of ``layer`` w.r.t. one input.

    ``units``: a list of (x, y, c); or None with ``channel=c`` for every position of channel c (channel 0
    when both are None). ``inputs``: (rows, cols, channels) array or tensor; default uniform [0, 1), ``seed``.
    ``crop``: run each unit only on the input window it sees (and, for a single unit, earlier layers only on
    the unit's field there; see :func:`crop_plan`); ``fast``: fold BatchNorm as for saliency.
    """
    network = as_loaded_model(model, architecture_only=True)
    adapter = adapter_for(network.module)
    array = _as_inputs(inputs, input_shape_for(network, None), seed)
    name, _ = adapter.resolve_layer(network.module, layer)
    report, field = field_of(network, array.shape[:2], name, needed=crop)
    if field is None:  # crop=False past an operation the trace refused: the whole input, no rectangle
        spatial_axes, (rows, cols, channels) = adapter.untraced_layer(network.module, name, array)
        kwargs = {} if spatial_axes is None else {"spatial_axes": spatial_axes}
    else:
        (rows, cols), channels, kwargs = field.spatial_shape, field.channels, layout(field)
    if units is None:
        c = 0 if channel is None else int(channel)
        units = [(x, y, c) for x in range(rows) for y in range(cols)]
    table = np.asarray(units, dtype=np.int64).reshape(-1, 3)
    size = len(table) * array.size * 4
    if size > MAX_RESULT_BYTES:
        raise BadInputError("number of units", expected=f"at most {MAX_RESULT_BYTES // (array.size * 4)} for a "
                            f"{' x '.join(map(str, array.shape))} input (one full-size gradient each)",
                            got=f"{len(table)} ({size / 2 ** 30:.1f} GiB of gradients)",
                            fix="pass fewer units (a list, or a smaller input) and call again per part")
    for x, y, c in table:
        if field is not None:
            field.check_unit((int(x), int(y)))
        elif not (0 <= x < rows and 0 <= y < cols):
            raise BadInputError(f"unit of layer {name!r}", expected=f"a position in 0..{rows - 1} x 0..{cols - 1}",
                                got=str((int(x), int(y))), fix=f"the layer's output is {rows} x {cols}")
        if not 0 <= c < channels:
            raise BadInputError(f"channel of layer {name!r}", expected=f"0..{channels - 1}", got=str(int(c)))
    if crop:
        try:
            grads, values, cropped = _on_windows(adapter, network.module, name, report, field, table, array,
                                                 batch_size, fast)
            return NodeGradients(grads, table, values, name, field, array, cropped)
        except GradsightError:
            raise
        except Exception:
            # A model that needs full-size maps (a fixed positional map added, say) fails on windows: run it
            # whole, as with crop=False, which raises again if the error had nothing to do with the windows.
            pass
    grads, values = adapter.unit_gradients(network.module, name, table, array, None, batch_size, fast, **kwargs)
    return NodeGradients(grads, table, values, name, field, array, False)


def field_of(network, size: tuple[int, ...], name: str, needed: bool = True) -> tuple[Any, LayerField | None]:
    """(report, the layer's field). When the trace refuses an operation, the layers that ran before it still
    have their exact fields (a partial report); for a layer after it, (None, None) unless ``needed``, in
    which case the refusal is raised."""
    try:
        report = receptive_field(network, size)
    except UnsupportedGeometryError as err:
        partial = getattr(err, "partial", None)
        if partial is not None and name in partial.names():
            return partial, partial[name]
        if needed or not hasattr(adapter_for(network.module), "untraced_layer"):
            raise
        return None, None
    return report, report[name]


def _on_windows(adapter, module, name, report, field, table, array, batch_size, fast):
    """(gradients, values, whether any unit ran cropped): one unit with its full crop plan, or many units
    each on its own input window, windows of one size sharing a batch."""
    single = len(table) == 1
    plans = [crop_plan(report, field, (int(x), int(y)), cuts=single) for x, y, _ in table]
    if single:
        grads, values = adapter.unit_gradients(module, name, table, array, plans, batch_size, fast, **layout(field))
        return grads, values, plans[0] is not None
    groups: dict[tuple | None, list[int]] = {}
    for i, plan in enumerate(plans):
        key = None if plan is None else tuple(b - a for a, b in plan.input_window)
        groups.setdefault(key, []).append(i)
    grads, values = None, np.zeros(len(table))
    for key, members in groups.items():
        chosen = None if key is None else [plans[i] for i in members]
        part, values[members] = adapter.unit_gradients(module, name, table[members], array, chosen, batch_size,
                                                       fast, **layout(field))
        grads = np.zeros((len(table), *part.shape[1:]), part.dtype) if grads is None else grads
        grads[members] = part
    return grads, values, None not in groups


def node_gradient(model: Any, layer: Any, unit: tuple[int, int, int], inputs=None, *, seed: int = 0,
                  crop: bool = True, fast: bool = True) -> NodeGradients:
    """d z[x, y, c] / d input for one unit (see the module docstring); ``.gradient`` is (H, W, C)."""
    if len(tuple(unit)) != 3:
        raise BadInputError("unit", expected="(x, y, c): row, column, channel", got=repr(unit))
    return node_gradients(model, layer, [tuple(unit)], inputs=inputs, seed=seed, crop=crop, fast=fast)


def strongest_units(model, layers, position: tuple[int, int] | str = "centre", inputs=None,
                    seed: int = 0) -> list[NodeGradients]:
    """For each layer, the unit at ``position`` ("centre" = each layer's centre unit) in the channel with the
    largest gradient, i.e. an alive one."""
    from dataclasses import replace

    # once: a name would otherwise build a fresh model on every call
    network = as_loaded_model(model, architecture_only=True)
    chosen = []
    for layer in layers:
        field = _field(network, layer)
        where = tuple(n // 2 for n in field.spatial_shape) if position == "centre" else tuple(position)
        probe = node_gradients(network, layer, channel=None, inputs=inputs, seed=seed,
                               units=[(*where, c) for c in range(field.channels)])
        best = int(np.argmax(np.abs(probe.gradients).reshape(len(probe), -1).sum(axis=1)))
        one = slice(best, best + 1)
        chosen.append(replace(probe, gradients=probe.gradients[one], units=probe.units[one],
                              values=probe.values[one]))
    return chosen


def _field(network, layer):
    from ..adapters.discovery import adapter_for

    name, _ = adapter_for(network.module).resolve_layer(network.module, layer)
    return receptive_field(network, input_shape_for(network, None)[1:])[name]
