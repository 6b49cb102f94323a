"""Per-layer receptive fields of one model at one input size, as found by an adapter's graph trace.

Example:
    >>> import gradsight                                                     # doctest: +SKIP
    >>> report = gradsight.receptive_field("seed-cnn-torch")                  # doctest: +SKIP
    >>> report["L6"].size, report["L6"].stride, report["L6"].padding          # doctest: +SKIP
    ((33, 33), (8, 8), (16, 16))
    >>> report["L6"].rect((0, 0))          # ((first row, last row), (first col, last col))  # doctest: +SKIP
    ((0, 16), (0, 16))
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadInputError, UnknownNameError
from .algebra import Field, LayerGeometry


@dataclass(frozen=True)
class LayerField:
    """One layer's output grid and the field of its units. Units are (row, col) = the exercise's (x, y)."""

    name: str
    kind: str
    output_shape: tuple[int, ...]  # (channels, rows, cols) without the batch axis
    field: Field
    input_size: tuple[int, ...]  # (rows, cols) of the model input
    geometry: LayerGeometry | None = None  # the layer's own kernel/stride/padding/dilation, if it has them
    seq: int = -1  # position of the operation that made this output in the traced run (-1: not recorded)
    calls: int = 1  # how many times the module ran in that run
    # Which axes of output_shape are the rows and columns; None: the last ones, channels first. A channels-
    # last output (nn.Linear on an N x H x W x C map, as in ConvNeXt) has output_shape (H, W, C) and (0, 1).
    spatial_axes: tuple[int, ...] | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        if self.spatial_axes is not None:
            return tuple(self.output_shape[a] for a in self.spatial_axes)
        return self.output_shape[-len(self.input_size):] if len(self.output_shape) > len(self.input_size) else ()

    @property
    def channel_axis(self) -> int:
        """The axis of output_shape that holds the channels (the unit's c)."""
        if self.spatial_axes is None:
            return 0
        return next(a for a in range(len(self.output_shape)) if a not in self.spatial_axes)

    @property
    def channels(self) -> int:
        return self.output_shape[self.channel_axis] if self.output_shape else 1

    @property
    def is_global(self) -> bool:
        return self.field.is_global

    def _axis_value(self, attribute: str):
        if self.field.axes is None:
            return None
        return tuple(max(getattr(c, attribute) for c in comps) for comps in self.field.axes)

    @property
    def size(self) -> tuple[int, ...] | None:
        """Receptive-field size per axis (unclipped); None when units see the whole input."""
        if self.field.axes is None:
            return None
        return tuple(max(c.end for c in comps) - min(c.start for c in comps) + 1 for comps in self.field.axes)

    @property
    def stride(self) -> tuple[int, ...] | None:
        """Effective stride per axis (the largest, when misaligned paths have several)."""
        return self._axis_value("stride")

    @property
    def padding(self) -> tuple[int, ...] | None:
        """Effective padding per axis: how far unit 0's field reaches before the first input pixel."""
        if self.field.axes is None:
            return None
        return tuple(-min(c.start for c in comps) for comps in self.field.axes)

    @property
    def aligned(self) -> bool:
        return self.field.misaligned is None

    def check_unit(self, unit: tuple[int, ...]) -> None:
        shape = self.spatial_shape
        if len(unit) != len(shape) or any(not 0 <= u < n for u, n in zip(unit, shape)):
            ranges = " x ".join(f"0..{n - 1}" for n in shape)
            raise BadInputError(f"unit of layer {self.name!r}", expected=f"a position in {ranges}",
                                got=str(tuple(unit)), fix=f"the layer's output is {self.output_shape}")

    def rect(self, unit: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """Per axis, the (first, last) input index the unit sees, clipped to the image (an outer bound)."""
        self.check_unit(unit)
        return tuple(self.field.span(axis, u, n) for axis, (u, n) in enumerate(zip(unit, self.input_size)))

    def centre(self, unit: tuple[int, ...]) -> tuple[float, ...]:
        """Input coordinates of the centre of the unit's unclipped field."""
        if self.field.axes is None:
            return tuple((n - 1) / 2 for n in self.input_size)
        return tuple(comps[0].centre(u) for comps, u in zip(self.field.axes, unit))

    def unit_at(self, point: tuple[float, ...]) -> tuple[int, ...]:
        """The unit whose field is centred nearest to the input ``point`` (inverse of ``centre``)."""
        if self.field.axes is None:
            return tuple(0 for _ in point)
        units = [comps[0].unit_at(p) for comps, p in zip(self.field.axes, point)]
        return tuple(min(max(u, 0), n - 1) for u, n in zip(units, self.spatial_shape))

    def as_dict(self) -> dict:
        g = self.geometry
        return {
            "name": self.name, "kind": self.kind, "output_shape": list(self.output_shape),
            "kernel": list(g.kernel) if g else None, "stride": list(g.stride) if g else None,
            "padding": list(g.padding) if g else None, "dilation": list(g.dilation) if g else None,
            "rf_size": list(self.size) if self.size else "global",
            "effective_stride": list(self.stride) if self.stride else None,
            "effective_padding": list(self.padding) if self.padding else None,
            "aligned": self.aligned, "misaligned_at": self.field.misaligned,
            "layout": "channels-last" if self.spatial_axes is not None else "channels-first",
        }


@dataclass(frozen=True)
class FieldReport:
    """The fields of every traced layer of a model, in execution order."""

    model_name: str
    input_size: tuple[int, ...]
    layers: tuple[LayerField, ...]
    reads: tuple[tuple[int, ...], ...] = ()  # per traced operation, which earlier outputs it read (is_cut)
    positional: tuple[int, ...] = ()  # operations mixing in a spatial map not derived from the input

    def translation_equivariant(self, layer: LayerField) -> bool:
        """Whether ``layer`` can be computed on a window of the input: False when the trace saw a spatial
        map not derived from the input (positions, coordinates) mixed in before it."""
        return not any(k <= layer.seq for k in self.positional)

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __getitem__(self, key: str | int) -> LayerField:
        if isinstance(key, int) and not isinstance(key, bool):
            if not -len(self.layers) <= key < len(self.layers):
                raise BadInputError("layer index", expected=f"0..{len(self.layers) - 1}", got=str(key),
                                    fix="or give the layer's name")
            return self.layers[key]
        for layer in self.layers:
            if layer.name == key:
                return layer
        raise UnknownNameError("layer", str(key), self.names())

    def __len__(self) -> int:
        return len(self.layers)

    def is_cut(self, earlier: LayerField, layer: LayerField) -> bool:
        """True when cropping ``earlier``'s output to ``layer``'s field cannot change ``layer`` nor break the
        run up to it: every operation between the two feeds ``layer`` (no side branch also reads the cropped
        tensor) and none reads anything older than ``earlier``'s output (every path runs through it).

        Known only for traces that record operation order (PyTorch); modules that ran more than once are
        never cuts (a hook on them would act on every call).
        """
        first, last = earlier.seq, layer.seq
        if not self.reads or earlier.calls != 1 or not 0 < first < last:
            return False
        feeding, todo = {last}, [last]
        while todo:  # every operation whose output ``layer`` depends on, back to ``earlier``
            for seq in self.reads[todo.pop()]:
                if seq > first and seq not in feeding:
                    feeding.add(seq)
                    todo.append(seq)
        return all(k in feeding and min(self.reads[k]) >= first for k in range(first + 1, last + 1))

    def rows(self, depth: int | None = 1) -> list[LayerField]:
        """Layers nested at most ``depth`` deep (1: the model's direct children); None for every module."""
        return [layer for layer in self.layers if depth is None or layer.name.count(".") < depth]

    def as_dict(self) -> dict:
        return {"model": self.model_name, "input_size": list(self.input_size),
                "layers": [layer.as_dict() for layer in self.layers]}
