"""Receptive fields measured from gradients, checked against the analytic ones; effective receptive fields.

Example:
    >>> import gradsight
    >>> checks = gradsight.compare_fields("seed-cnn")        # every layer, centre and corner units
    >>> all(check.agree for check in checks), len(checks)
    (True, 12)

The measured field of a unit is the support of d z / d input. Two ways keep it honest despite dead ReLUs
and max-pool routing: ``mode="linear"`` (default) measures a copy whose activations are identities and whose
max-pools average, so every wired pixel gets a gradient whatever the input; ``mode="union"`` keeps the model
as it is and takes the union of supports over ``samples`` random inputs and over channels. A unit whose
gradient is zero everywhere is reported as dead, not as an empty field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..adapters.discovery import adapter_for
from ..errors import BadInputError
from ..models.registry import as_loaded_model
from .analytic import input_shape_for, receptive_field
from .node_gradient import field_of, layout, support_box

MODES = ("linear", "union")


@dataclass(frozen=True)
class FieldCheck:
    """Analytic rectangle vs measured bounding box of one unit, ((row0, row1), (col0, col1)) inclusive."""

    layer: str
    unit: tuple[int, int]
    analytic: tuple[tuple[int, int], ...] | None  # None: unknown (the trace cannot follow the model there)
    measured: tuple[tuple[int, int], ...] | None

    @property
    def dead(self) -> bool:
        return self.measured is None

    @property
    def sees_nothing(self) -> bool:
        """True for units that lie wholly in padding (e.g. the border of a padding layer's output)."""
        return self.analytic is not None and any(first > last for first, last in self.analytic)

    @property
    def agree(self) -> bool:
        if self.analytic is None:
            return False
        return self.measured == self.analytic or (self.sees_nothing and self.measured is None)


def _pads_only(field) -> bool:
    g = field.geometry
    return "Pad" in field.kind and g is not None and set(g.kernel) == {1} and set(g.stride) == {1}


def _inputs(shape: tuple[int, ...], samples: int, seed: int) -> np.ndarray:
    channels, *size = shape
    return np.random.default_rng(seed).random((samples, *size, channels), dtype=np.float32)


def _unit_list(field, units) -> list[tuple[int, int]]:
    rows, cols = field if isinstance(field, tuple) else field.spatial_shape
    named = {"centre": (rows // 2, cols // 2), "corner": (0, 0), "far-corner": (rows - 1, cols - 1)}
    out = []
    for unit in units:
        unit = named.get(unit, unit) if isinstance(unit, str) else tuple(unit)
        if isinstance(unit, str):
            raise BadInputError("unit", expected=f"(x, y) or one of {sorted(named)}", got=repr(unit))
        out.append(unit)
    return list(dict.fromkeys(out))


def compare_fields(model: Any, input_size: tuple[int, int] | None = None, *, layers=None, depth: int | None = 1,
                   units=("centre", "corner"), mode: str = "linear", samples: int = 2,
                   seed: int = 0) -> list[FieldCheck]:
    """Measure the field of ``units`` on every spatial layer (or ``layers``) and pair it with the analytic one."""
    if mode not in MODES:
        raise BadInputError("mode", expected=f"one of {MODES}", got=repr(mode))
    network = as_loaded_model(model, architecture_only=True)
    shape = input_shape_for(network, input_size)
    report = receptive_field(network, shape[1:])
    chosen = report.rows(depth) if layers is None else [report[layer] for layer in layers]
    # Padding layers are left out: their border units are constants that depend on no pixel at all.
    chosen = [f for f in chosen if len(f.spatial_shape) == 2 and not f.is_global and not _pads_only(f)]
    adapter = adapter_for(network.module)
    module = adapter.modified_copy(network.module, "linearised") if mode == "linear" else network.module
    x = _inputs(shape, samples, seed)
    checks = []
    for field in chosen:
        for unit in _unit_list(field, units):
            analytic = field.rect(unit)
            measured = support_box(adapter.support_map(module, field.name, unit, x, seed, **layout(field)))
            checks.append(FieldCheck(field.name, unit, analytic, measured))
    return checks


def measure_field(model: Any, layer: Any, unit: tuple[int, int] | str = "centre", *,
                  input_size: tuple[int, int] | None = None, mode: str = "union", samples: int = 4,
                  seed: int = 0) -> tuple[np.ndarray, FieldCheck]:
    """The summed |gradient| map (H, W) of one unit and its check against the analytic rectangle."""
    if mode not in MODES:
        raise BadInputError("mode", expected=f"one of {MODES}", got=repr(mode))
    network = as_loaded_model(model, architecture_only=True)
    adapter = adapter_for(network.module)
    shape = input_shape_for(network, input_size)
    name, _ = adapter.resolve_layer(network.module, layer)
    inputs = _inputs(shape, samples, seed)
    _, field = field_of(network, shape[1:], name, needed=False)
    if field is None:  # past an operation the trace refuses: measured only, the analytic field is unknown
        spatial_axes, (rows, cols, _) = adapter.untraced_layer(network.module, name, inputs[0])
        grid, kwargs = (rows, cols), ({} if spatial_axes is None else {"spatial_axes": spatial_axes})
    else:
        grid, kwargs = field, layout(field)
    (unit,) = _unit_list(grid, [unit])
    module = adapter.modified_copy(network.module, "linearised") if mode == "linear" else network.module
    values = adapter.support_map(module, name, unit, inputs, seed, **kwargs)
    return values, FieldCheck(name, unit, None if field is None else field.rect(unit), support_box(values))


@dataclass(frozen=True, eq=False)
class EffectiveField:
    """Luo et al. (2016): how the gradient magnitude of a centre unit spreads over its receptive field."""

    layer: str
    unit: tuple[int, int]
    mass: np.ndarray  # (H, W), sums to 1
    centre: tuple[float, float]

    def radius(self, fraction: float = 0.5) -> float:
        """Smallest radius around ``centre`` whose disc holds ``fraction`` of the gradient mass."""
        if not 0 < fraction <= 1:
            raise BadInputError("fraction", expected="a number in (0, 1]", got=str(fraction))
        rows, cols = np.indices(self.mass.shape)
        distance = np.hypot(rows - self.centre[0], cols - self.centre[1]).ravel()
        order = np.argsort(distance, kind="stable")
        cumulative = np.cumsum(self.mass.ravel()[order])
        index = min(int(np.searchsorted(cumulative, fraction * cumulative[-1])), len(order) - 1)
        return float(distance[order][index])


def effective_receptive_field(model: Any, layer: Any, *, input_size: tuple[int, int] | None = None,
                              samples: int = 8, seed: int = 0) -> EffectiveField:
    """Mean |d z_centre / d input| over ``samples`` uniform random inputs, normalised to total mass 1."""
    # once: a name would otherwise build the model twice
    network = as_loaded_model(model, architecture_only=True)
    values, check = measure_field(network, layer, "centre", input_size=input_size, mode="union", samples=samples,
                                  seed=seed)
    total = values.sum()
    if total == 0:
        raise BadInputError(f"centre unit of layer {check.layer!r}", expected="a unit with a non-zero gradient",
                            got="a dead unit on all inputs", fix="use more samples or another layer")
    field = receptive_field(network, input_shape_for(network, input_size)[1:])[check.layer]
    return EffectiveField(check.layer, check.unit, values / total, field.centre(check.unit))
