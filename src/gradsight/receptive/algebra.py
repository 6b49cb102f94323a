"""Receptive-field algebra (Araujo, Norris & Sim, "Computing Receptive Fields of CNNs", Distill 2019).

Example — the seed CNN's six convolutions (kernels 5,5,3,3,3,3; strides 1,2,1,2,1,2; PyTorch k//2 padding):
    >>> field = chain_field([(5, 1, 2), (5, 2, 2), (3, 1, 1), (3, 2, 1), (3, 1, 1), (3, 2, 1)])
    >>> field.size, field.stride, field.padding
    (33, 8, 16)
    >>> field.span(0, length=128)     # rows of the input that unit 0 sees, clipped to the image
    (0, 16)

One axis of a unit grid is described by where unit u's input interval starts and ends:
``[u*S + start, u*S + end]``. Then ``size = end - start + 1``, ``padding = -start``, and a layer with kernel
k, stride s, left padding p and dilation d maps (S, start, end) to

    S' = s*S,   start' = start - p*S,   end' = end + (d*(k - 1) - p)*S

which is the closed form r = 1 + sum_l (k'_l - 1) * prod_{i<l} s_i, P = sum_l p_l * prod_{i<l} s_i, unrolled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class AxisField:
    """The field of one spatial axis: unit u sees input indices [u*stride + start, u*stride + end]."""

    stride: int = 1
    start: int = 0
    end: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    @property
    def padding(self) -> int:
        """Effective padding P: how far unit 0's field starts before input index 0."""
        return -self.start

    @property
    def centre_offset(self) -> float:
        """Centre of unit 0's field, -P + (r - 1) / 2: paths agree (are aligned) when this and S agree."""
        return (self.start + self.end) / 2

    def then(self, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> AxisField:
        """The field after one more layer (kernel, stride, left padding, dilation) on this axis."""
        reach = dilation * (kernel - 1)
        return AxisField(self.stride * stride, self.start - padding * self.stride,
                         self.end + (reach - padding) * self.stride)

    def after(self, earlier: AxisField) -> AxisField | None:
        """The field of this tensor's units on ``earlier``'s grid, when this field is ``earlier``'s followed
        by more layers: AxisField(2, -1, 3).after(AxisField(2, -1, 1)) is AxisField(1, 0, 1).

        Composition gives stride = S_e * s, start = a_e + a * S_e and end = e_e + e * S_e; this solves for
        (s, a, e), and returns None when they are not whole numbers (the fields do not chain).
        """
        step = earlier.stride
        if self.stride % step or (self.start - earlier.start) % step or (self.end - earlier.end) % step:
            return None
        return AxisField(self.stride // step, (self.start - earlier.start) // step, (self.end - earlier.end) // step)

    def span(self, unit: int, length: int | None = None) -> tuple[int, int]:
        """Input indices (first, last) seen by ``unit``, clipped to [0, length - 1] when length is given."""
        first, last = unit * self.stride + self.start, unit * self.stride + self.end
        if length is not None:
            first, last = max(first, 0), min(last, length - 1)
        return first, last

    def centre(self, unit: int) -> float:
        """Input coordinate of the centre of ``unit``'s (unclipped) field."""
        return unit * self.stride + self.centre_offset

    def unit_at(self, coordinate: float) -> int:
        """The unit whose field is centred nearest to input ``coordinate`` (inverse of ``centre``)."""
        return round((coordinate - self.centre_offset) / self.stride)


def chain_field(layers: Iterable[Sequence[int]]) -> AxisField:
    """The field of a straight chain of layers given as (kernel, stride[, padding[, dilation]]) per layer."""
    field = AxisField()
    for kernel, stride, *rest in layers:
        padding = rest[0] if rest else 0
        dilation = rest[1] if len(rest) > 1 else 1
        field = field.then(kernel, stride, padding, dilation)
    return field


@dataclass(frozen=True)
class Field:
    """A tensor's field on every spatial axis, over all the paths that reach it.

    ``axes[i]`` holds one AxisField per distinct effective stride among the paths (normally one). ``axes`` is
    None when every unit sees the whole input (after global pooling, flattening, or an SE-style gate).
    ``misaligned`` names the first place where paths met with different strides or centres.
    ``reach`` is, per axis, the (lowest, highest) input index that any unit of the tensor depends on (None:
    not known, the whole input). It is narrower than the input when a layer drops trailing positions — a
    3x3/2 convolution without padding on 128 rows never reads row 127 — and unit rectangles are clipped to it.
    """

    axes: tuple[tuple[AxisField, ...], ...] | None
    misaligned: str | None = None
    reach: tuple[tuple[int, int], ...] | None = None

    @staticmethod
    def identity(ndim: int) -> Field:
        return Field(tuple((AxisField(),) for _ in range(ndim)))

    @staticmethod
    def everything(misaligned: str | None = None) -> Field:
        return Field(None, misaligned)

    @property
    def is_global(self) -> bool:
        return self.axes is None

    def then(self, kernels, strides, paddings, dilations) -> Field:
        """Apply one layer given per-axis kernel, stride, left padding and dilation."""
        if self.axes is None:
            return self
        axes = tuple(tuple(c.then(k, s, p, d) for c in comps)
                     for comps, k, s, p, d in zip(self.axes, kernels, strides, paddings, dilations))
        return Field(axes, self.misaligned, self.reach)

    def within(self, sizes) -> Field:
        """This field for a tensor of ``sizes`` units per axis: its reach is at most what unit 0 and the last
        unit see (and never more than the tensor it was computed from could see)."""
        if self.axes is None:
            return self
        reach = []
        for axis, (comps, n) in enumerate(zip(self.axes, sizes)):
            low = min(c.start for c in comps)
            high = max((n - 1) * c.stride + c.end for c in comps)
            if self.reach is not None:
                low, high = max(low, self.reach[axis][0]), min(high, self.reach[axis][1])
            reach.append((low, high))
        return Field(self.axes, self.misaligned, tuple(reach))

    def merge(self, other: Field, where: str) -> Field:
        """The field of an element-wise combination (sum, product, concatenation) of two tensors."""
        misaligned = self.misaligned or other.misaligned
        if self.axes is None or other.axes is None:
            return Field(None, misaligned)
        if len(self.axes) != len(other.axes):
            return Field(None, misaligned)
        merged_axes = []
        for mine, theirs in zip(self.axes, other.axes):
            by_stride: dict[int, AxisField] = {c.stride: c for c in mine}
            for comp in theirs:
                have = by_stride.get(comp.stride)
                if have is None:
                    misaligned = misaligned or f"{where}: paths with effective strides {sorted(by_stride)} " \
                                               f"and {comp.stride} meet"
                    by_stride[comp.stride] = comp
                    continue
                if have.centre_offset != comp.centre_offset and not misaligned:
                    misaligned = (f"{where}: paths centred at {have.centre_offset:g} and {comp.centre_offset:g} "
                                  f"(stride {comp.stride}) meet")
                by_stride[comp.stride] = AxisField(comp.stride, min(have.start, comp.start), max(have.end, comp.end))
            merged_axes.append(tuple(sorted(by_stride.values(), key=lambda c: c.stride)))
        reach = None
        if self.reach is not None and other.reach is not None:
            reach = tuple((min(a[0], b[0]), max(a[1], b[1])) for a, b in zip(self.reach, other.reach))
        return Field(tuple(merged_axes), misaligned, reach)

    def span(self, axis: int, unit: int, length: int) -> tuple[int, int]:
        """Outer bound (first, last) of the input indices ``unit`` sees on ``axis``, clipped to the input."""
        if self.axes is None:
            return 0, length - 1
        spans = [c.span(unit) for c in self.axes[axis]]
        low, high = (0, length - 1) if self.reach is None else self.reach[axis]
        return max(min(s[0] for s in spans), low, 0), min(max(s[1] for s in spans), high, length - 1)


@dataclass(frozen=True)
class LayerGeometry:
    """What a layer does to the grid, per spatial axis (None for layers that do not change it)."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
