"""Analytic receptive fields of any PyTorch model, by tracing one forward pass at the ATen level.

Example:
    >>> import torchvision                                                            # doctest: +SKIP
    >>> report = trace_fields(torchvision.models.resnet50(), (3, 224, 224))            # doctest: +SKIP
    >>> report["layer3"].size, report["layer3"].stride                                 # doctest: +SKIP
    ((427, 427), (16, 16))

Every ATen operation the model runs is classified: convolutions, pooling, padding and crops change the grid
(their kernel, stride, padding and dilation enter the algebra); element-wise operations, normalisation and
channel-wise reshapes keep it, and merge the fields of their inputs (residual additions, concatenations,
gates); reductions over space and flattening make every unit see the whole input. Any other operation that
touches a spatial tensor is refused by name — gradsight never guesses a geometry.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ...errors import BadInputError, GradsightError, UnsupportedGeometryError
from ...receptive.algebra import AxisField, Field, LayerGeometry
from ...receptive.report import FieldReport, LayerField
from ..common import avoid_triton_tensorflow_clash
from .layers import ROOT, eval_mode

avoid_triton_tensorflow_clash("torch")  # before torch runs anything that imports Triton



# Operations that act on each spatial position separately (besides those ATen tags as pointwise).
_PER_POSITION = {
    "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training", "batch_norm",
    "hardswish", "hardswish_", "silu", "silu_", "gelu", "gelu_", "mish", "mish_", "elu", "elu_",
    "leaky_relu", "leaky_relu_", "prelu", "_prelu_kernel", "hardsigmoid_", "native_dropout", "dropout",
    "clone", "detach", "_to_copy", "alias", "lift_fresh", "contiguous", "copy_", "expand", "_log_softmax",
    "_softmax", "log_softmax", "softmax", "split", "split_with_sizes", "chunk", "unbind",
}
_POOLS = {"max_pool2d_with_indices", "max_pool2d", "avg_pool2d", "max_pool1d", "avg_pool1d",
          "max_pool1d_with_indices", "max_pool3d_with_indices", "avg_pool3d"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "var_mean", "logsumexp", "norm"}
_VIEWS = {"view", "_unsafe_view", "reshape", "_reshape_alias", "flatten"}
_LINEAR = {"addmm", "mm", "bmm", "matmul", "linear", "baddbmm"}


def _as_list(value, n: int) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    value = list(value)
    return value * n if len(value) == 1 else value


class _Tracked:
    """A tensor derived from the input: its field, which of its axes are spatial, and when it was made.

    ``rows`` is set while positions are folded into the rows of a 2-D (positions, features) matrix, as
    nn.Linear does to a channels-last map (view, addmm, view back): the shape before folding, minus the
    features axis, and the spatial axes within it.
    """

    __slots__ = ("tensor", "field", "dims", "seq", "rows")

    def __init__(self, tensor, field: Field, dims: tuple[int, ...], seq: int, rows=None):
        self.tensor, self.field, self.dims, self.seq, self.rows = tensor, field, dims, seq, rows


class _Op(NamedTuple):
    """One traced ATen call, as its handler sees it."""

    func: object
    name: str
    args: tuple
    inputs: list
    first: _Tracked
    outs: list
    out: object


class _FieldMode(TorchDispatchMode):
    def __init__(self, stack: list[str]):
        super().__init__()
        self.tracked: dict[int, _Tracked] = {}
        self.stack = stack
        self.local_ops: dict[str, list[tuple[AxisField, ...]]] = {}
        self.input_sizes: tuple[int, ...] = ()
        self.first_kernel_seen = False
        # Operation k (1, 2, ...) creates tensors with seq k and reads the tensors whose seqs are reads[k]
        # (the input has seq 0); FieldReport.is_cut works on this graph.
        self.reads: list[tuple[int, ...]] = [()]
        self.positional: list[int] = []  # operations that mix in a map not derived from the input

    def lookup(self, value) -> _Tracked | None:
        if not isinstance(value, torch.Tensor):
            return None
        hit = self.tracked.get(id(value))
        return hit if hit is not None and hit.tensor is value else None

    def track(self, tensor, field: Field, dims: tuple[int, ...], rows=None) -> None:
        if isinstance(tensor, torch.Tensor):
            self.tracked[id(tensor)] = _Tracked(tensor, field, dims, len(self.reads) - 1, rows)

    def where(self) -> str:
        return (self.stack[-1] if self.stack else "") or ROOT

    def refuse(self, func, reason: str):
        raise UnsupportedGeometryError(
            f"receptive field of module {self.where()!r}: expected operations with a known effect on the pixel "
            f"grid, got {func} ({reason}). Replace or wrap that module; or, for layers after it, use what needs "
            f"no analytic field: gradsight.node_gradient(model, layer, unit, crop=False) (the gradient on the "
            f"whole input) and gradsight.measure_field(model, layer, mode='union') (the support measured from "
            f"gradients). Layers that run before it keep their fields in node_gradient.")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flat_args, _ = tree_flatten((args, kwargs))
        inputs = [t for t in (self.lookup(a) for a in flat_args) if t is not None]
        if inputs:
            self.reads.append(tuple(t.seq for t in inputs))
            if self.mixes_in_a_map(func, flat_args, inputs):
                self.positional.append(len(self.reads) - 1)
            self.propagate(func, args, inputs, out)
        return out

    def mixes_in_a_map(self, func, flat_args, inputs: list[_Tracked]) -> bool:
        """Whether an element-wise operation or concatenation combines the input's maps with a tensor that
        varies over space but does not come from the input — a positional map, CoordConv's coordinates.
        The field is unchanged, but the result then depends on where a pixel is, so windows cannot be used."""
        if not (torch.Tag.pointwise in func.tags or func.overloadpacket.__name__ == "cat"):
            return False
        spatial = [t for t in inputs if t.dims and not t.field.is_global]
        if not spatial:
            return False
        ref = spatial[0]
        for arg in flat_args:
            if not isinstance(arg, torch.Tensor) or self.lookup(arg) is not None or arg.ndim == 0:
                continue
            shift = ref.tensor.ndim - arg.ndim
            if any(0 <= d - shift < arg.ndim and arg.shape[d - shift] > 1 for d in ref.dims):
                return True
        return False

    def note_local(self, per_axis: tuple[AxisField, ...], kernel, dilation) -> None:
        for module in set(self.stack):  # a container's geometry is that of the operations inside it
            self.local_ops.setdefault(module, []).append((per_axis, tuple(kernel), tuple(dilation)))

    def propagate(self, func, args, inputs: list[_Tracked], out) -> None:
        """Give the outputs of one ATen operation their fields: by the handler of its name (``_HANDLERS``),
        as a per-position operation when ATen tags it pointwise, or refuse it by name."""
        name = func.overloadpacket.__name__
        first = inputs[0]
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if all(t.field.is_global for t in inputs):  # past global pooling nothing can narrow the field again
            self.global_out(outs, first)
            return
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(self, _Op(func, name, args, inputs, first, outs, out))
        elif torch.Tag.pointwise in func.tags or name in _PER_POSITION:
            self.merge_out(func, inputs, outs)
        else:
            self.refuse(func, "its effect on the pixel grid is unknown to gradsight")

    # --- one handler per kind of operation (the table _HANDLERS below maps ATen names to them) -------------

    def _convolution(self, op: _Op) -> None:
        if op.args[6]:
            self.refuse(op.func, "transposed convolutions upsample")
        n = len(op.first.dims)
        kernel = list(op.args[1].shape[2:])
        stride, padding, dilation = (_as_list(op.args[i], n) for i in (3, 4, 5))
        self.apply_layer(op.first, op.outs[:1], kernel, stride, padding, dilation)

    def _pool(self, op: _Op) -> None:
        args, n = op.args, len(op.first.dims)
        kernel = _as_list(args[1], n)
        stride = _as_list(args[2], n) if len(args) > 2 and args[2] else kernel
        padding = _as_list(args[3], n) if len(args) > 3 else [0] * n
        dilation = _as_list(args[4], n) if len(args) > 4 and "max" in op.name else [1] * n
        self.apply_layer(op.first, op.outs, kernel, stride, padding, dilation)

    def _constant_pad(self, op: _Op) -> None:
        pads, ndim = list(op.args[1]), op.first.tensor.ndim
        left = []
        for d in op.first.dims:
            j = ndim - 1 - d  # pad lists start from the last dimension
            left.append(pads[2 * j] if 2 * j < len(pads) else 0)
        n = len(op.first.dims)
        self.apply_layer(op.first, op.outs, [1] * n, [1] * n, left, [1] * n)

    def _adaptive_pool(self, op: _Op) -> None:
        first = op.first
        sizes_in = [first.tensor.shape[d] for d in first.dims]
        sizes_out = _as_list(op.args[1], len(sizes_in))
        if all(o == 1 for o in sizes_out):
            self.global_out(op.outs, first)
        elif sizes_in == sizes_out:
            self.same(op.outs, first.field, first.dims)
        elif all(i % o == 0 for i, o in zip(sizes_in, sizes_out)):
            k = [i // o for i, o in zip(sizes_in, sizes_out)]
            self.apply_layer(first, op.outs, k, k, [0] * len(k), [1] * len(k))
        else:
            self.refuse(op.func, f"adaptive pooling from {sizes_in} to {sizes_out} has uneven bins")

    def _reduction(self, op: _Op) -> None:
        first, args = op.first, op.args
        dims = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else None
        reduced = set(range(first.tensor.ndim)) if dims is None else {d % first.tensor.ndim for d in dims}
        if reduced & set(first.dims):
            self.global_out(op.outs, first)
        else:
            keep = op.out.ndim == first.tensor.ndim if isinstance(op.out, torch.Tensor) else True
            shift = 0 if keep else sum(1 for d in reduced if d < min(first.dims))
            self.same(op.outs, first.field, tuple(d - shift for d in first.dims))

    def _view(self, op: _Op) -> None:
        self.view(op.func, op.first, op.outs)

    def _permute(self, op: _Op) -> None:
        order = [d % op.first.tensor.ndim for d in op.args[1]]
        self.same(op.outs, op.first.field, tuple(order.index(d) for d in op.first.dims))

    def _transpose(self, op: _Op) -> None:
        ndim = op.first.tensor.ndim
        a, b = (op.args[1] % ndim, op.args[2] % ndim) if op.name == "transpose" else (0, 1)
        swap = {a: b, b: a}
        self.same(op.outs, op.first.field, tuple(swap.get(d, d) for d in op.first.dims))

    def _roll(self, op: _Op) -> None:
        dims = op.args[2] if len(op.args) > 2 else ()  # none: a roll of the flattened tensor
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not dims or {d % op.first.tensor.ndim for d in dims} & set(op.first.dims):
            self.refuse(op.func, "a cyclic shift (roll) of a spatial axis wraps pixels from one border to the "
                                 "other, as in shifted-window attention")
        self.same(op.outs, op.first.field, op.first.dims)

    def _cat(self, op: _Op) -> None:
        dim = (op.args[1] if len(op.args) > 1 else 0) % op.first.tensor.ndim
        if dim in op.first.dims:
            self.refuse(op.func, "concatenation along a spatial axis")
        self.merge_out(op.func, op.inputs, op.outs)

    def _slice(self, op: _Op) -> None:
        first, args = op.first, op.args
        dim = (args[1] if len(args) > 1 else 0) % first.tensor.ndim
        if dim not in first.dims:
            dims = first.dims if op.name == "slice" else tuple(d - (d > dim) for d in first.dims)
            self.same(op.outs, first.field, dims)
        elif op.name == "select":
            self.refuse(op.func, "selecting one spatial index")
        else:
            size = first.tensor.shape[dim]
            start = args[2] if len(args) > 2 and args[2] is not None else 0
            start = start + size if start < 0 else min(start, size)
            step = args[4] if len(args) > 4 else 1
            axis = first.dims.index(dim)
            n = len(first.dims)
            self.apply_layer(first, op.outs, [1] * n, [step if i == axis else 1 for i in range(n)],
                             [-start if i == axis else 0 for i in range(n)], [1] * n)

    def _linear(self, op: _Op) -> None:
        first = op.first
        if first.rows is not None and first.tensor.ndim == 2:
            for o in op.outs:  # one row per position, mixing only features
                self.track(o, first.field, first.dims, first.rows)
        elif first.field.is_global or (first.tensor.ndim - 1) not in first.dims:
            self.same(op.outs, first.field if not first.field.is_global else Field.everything(), first.dims)
        else:
            self.global_out(op.outs, first)

    def _layer_norm(self, op: _Op) -> None:
        normalised = len(op.args[1])
        if any(d >= op.first.tensor.ndim - normalised for d in op.first.dims):
            self.global_out(op.outs, op.first)
        else:
            self.same(op.outs[:1], op.first.field, op.first.dims)

    def apply_layer(self, src: _Tracked, outs, kernel, stride, padding, dilation) -> None:
        reach = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
        if not self.first_kernel_seen and any(r > 1 for r in reach):
            self.first_kernel_seen = True
            sizes = self.input_sizes
            if any(n < r for n, r in zip(sizes, reach)):
                raise BadInputError("input size", expected=f"at least {' x '.join(map(str, reach))} pixels, the "
                                    f"extent of the first kernel (module {self.where()!r})",
                                    got=" x ".join(map(str, sizes)), fix="pass a larger input size")
        self.note_local(tuple(AxisField().then(k, s, p, d) for k, s, p, d in zip(kernel, stride, padding, dilation)),
                        kernel, dilation)
        field = src.field.then(kernel, stride, padding, dilation)
        if outs:
            field = field.within([outs[0].shape[d] for d in src.dims])
        self.same(outs, field, src.dims)

    def same(self, outs, field: Field, dims) -> None:
        for o in outs:
            self.track(o, field, tuple(dims))

    def global_out(self, outs, src: _Tracked) -> None:
        for o in outs:
            self.track(o, Field.everything(src.field.misaligned), ())

    def merge_out(self, func, inputs: list[_Tracked], outs) -> None:
        spatial = [t for t in inputs if t.dims]
        base = max(spatial or inputs, key=lambda t: t.tensor.ndim)
        field = base.field
        for other in inputs:
            if other is base:
                continue
            if other.field.is_global or not other.dims:
                field = Field.everything(field.misaligned or other.field.misaligned)
            else:
                field = field.merge(other.field, where=f"{self.where()} ({func.overloadpacket.__name__})")
        for o in outs:  # positions folded into rows stay folded (a bias added after a matmul, say)
            self.track(o, field, base.dims, base.rows if not field.is_global else None)

    def view(self, func, src: _Tracked, outs) -> None:
        if src.field.is_global:
            self.same(outs, src.field, ())
            return
        shape_in = list(src.tensor.shape)
        for o in outs:
            shape_out = list(o.shape)
            if src.rows is not None:
                prefix, dims = src.rows
                self.refuse_split(func, [*prefix, shape_in[-1]], dims, shape_out)
                if tuple(shape_out[:-1]) == prefix:  # unfolded: the positions are axes again
                    self.track(o, src.field, dims)
                elif len(shape_out) == 2 and shape_out[0] == shape_in[0]:
                    self.track(o, src.field, (0,), src.rows)
                else:
                    self.track(o, Field.everything(src.field.misaligned), ())
                continue
            self.refuse_split(func, shape_in, src.dims, shape_out)
            if (len(shape_in) > 2 and len(shape_out) == 2 and shape_out[1] == shape_in[-1]
                    and len(shape_in) - 1 not in src.dims):
                # positions folded into rows, features kept: (N, H, W, C) -> (N*H*W, C)
                self.track(o, src.field, (0,), (tuple(shape_in[:-1]), src.dims))
                continue
            suffix = shape_in[min(src.dims):]
            if len(shape_out) >= len(suffix) and shape_out[len(shape_out) - len(suffix):] == suffix:
                shift = len(shape_out) - len(shape_in)
                self.track(o, src.field, tuple(d + shift for d in src.dims))
            else:  # flattening space into features: every output sees every position
                self.track(o, Field.everything(src.field.misaligned), ())

    def refuse_split(self, func, shape_in, dims, shape_out) -> None:
        """Refuse a view that cuts a spatial axis into several axes (Swin's window partition: H becomes
        H/7 windows of 7 rows). Flattening merges axes and is fine; a split has an output axis boundary
        strictly inside the spatial axis, i.e. a prefix product of the output shape between the products of
        the input shape before and after that axis."""
        bounds, product = set(), 1
        for n in shape_out:
            product *= n
            bounds.add(product)
        for d in dims:
            before = math.prod(shape_in[:d])
            after = before * shape_in[d]
            inside = sorted(b for b in bounds if before < b < after)
            if inside:
                parts = [inside[0] // before] + [b // a for a, b in zip(inside, inside[1:])] + [after // inside[-1]]
                self.refuse(func, f"a view that splits spatial axis {d} of size {shape_in[d]} into "
                                  f"{' x '.join(map(str, parts))}, as a window partition does")


_HANDLERS = {
    "convolution": _FieldMode._convolution,
    **dict.fromkeys(_POOLS, _FieldMode._pool),
    "constant_pad_nd": _FieldMode._constant_pad,
    **dict.fromkeys(("_adaptive_avg_pool2d", "adaptive_max_pool2d", "_adaptive_avg_pool3d", "adaptive_avg_pool1d"),
                    _FieldMode._adaptive_pool),
    **dict.fromkeys(_REDUCTIONS, _FieldMode._reduction),
    **dict.fromkeys((*_VIEWS, "unsqueeze", "squeeze"), _FieldMode._view),
    "permute": _FieldMode._permute,
    "transpose": _FieldMode._transpose,
    "t": _FieldMode._transpose,
    "roll": _FieldMode._roll,
    "cat": _FieldMode._cat,
    "slice": _FieldMode._slice,
    "select": _FieldMode._slice,
    **dict.fromkeys(_LINEAR, _FieldMode._linear),
    "native_layer_norm": _FieldMode._layer_norm,
}


def first_conv_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.in_channels
    return 3


def trace_fields(model: nn.Module, input_shape: tuple[int, ...] | None = None,
                 name: str | None = None) -> FieldReport:
    """Receptive fields of every module of ``model`` for an input of ``input_shape`` = (channels, rows, cols).

    Geometry needs shapes, not values: the model is traced as a copy on PyTorch's meta device, whose tensors
    have no storage, so time and memory do not grow with the input's pixel count (ResNet50 at 4096 x 4096 in
    about a second). A model that cannot run there (one that looks at values, or keeps tensors outside its
    parameters and buffers) is traced on its own device instead, with real tensors.
    """
    if input_shape is None:
        input_shape = (first_conv_channels(model), 224, 224)
    if len(input_shape) not in (2, 3) or any(int(n) < 1 for n in input_shape):
        raise BadInputError("input shape", expected="(channels, length) or (channels, rows, cols)",
                            got=str(tuple(input_shape)))
    input_shape = tuple(int(n) for n in input_shape)
    try:
        traced = None
        clone = _meta_copy(model)
        if clone is not None:
            try:
                traced = _run(clone, input_shape, torch.device("meta"))
            except GradsightError:  # refusals do not depend on the device
                raise
            except Exception:  # needs values or real tensors: trace the model itself, below
                traced = None
        if traced is None:
            traced = _run_real(model, input_shape)
    except UnsupportedGeometryError as err:
        # The modules that finished before the refused operation have exact fields: node_gradient uses them.
        state, err.traced = getattr(err, "traced", None), None  # drop the tensors
        err.partial = None if state is None else _report(*state, input_shape, model, name)
        raise
    return _report(*traced, input_shape, model, name)


def _report(mode, records, order, calls, input_shape, model, name) -> FieldReport:
    layers = []
    spatial = tuple(input_shape[1:])
    for layer in order:
        module, out, seq = records[layer]
        tracked = mode.lookup(out) if isinstance(out, torch.Tensor) else None
        if tracked is None:
            continue
        geometry = _geometry(mode.local_ops.get(layer))
        axes = tuple(d - 1 for d in tracked.dims)  # without the batch axis
        trailing = tuple(range(out.ndim - 1 - len(axes), out.ndim - 1))
        layers.append(LayerField(layer, type(module).__name__, tuple(out.shape[1:]), tracked.field, spatial,
                                 geometry, seq=seq, calls=calls[layer],
                                 spatial_axes=axes if axes and axes != trailing and tracked.rows is None else None))
    return FieldReport(name or type(model).__name__, spatial, tuple(layers), tuple(mode.reads),
                       tuple(mode.positional))


def _meta_copy(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` whose parameters and buffers are storage-less meta tensors (the values are never
    read nor copied), without the user's hooks; None when the model cannot be copied."""
    memo: dict[int, torch.Tensor] = {}
    try:
        for p in model.parameters():
            memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for b in model.buffers():
            memo[id(b)] = torch.empty_like(b, device="meta")
        clone = copy.deepcopy(model, memo)
    except Exception:
        return None
    for module in clone.modules():  # hooks that record activations must not see our run
        for hooks in (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
                      module._backward_pre_hooks):
            hooks.clear()
    return clone


def _out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def _run_real(model: nn.Module, input_shape: tuple[int, ...]):
    """_run on the model's own device, with its errors in one line: out of memory said as such."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        return _run(model, input_shape, device)
    except GradsightError:
        raise
    except (RuntimeError, MemoryError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if _out_of_memory(err):
            raise BadInputError("receptive-field trace", expected="enough memory to run the model once at "
                                f"{' x '.join(map(str, input_shape[1:]))}", got=f"out of memory ({first})",
                                fix="pass a smaller input size, or free memory") from None
        raise BadInputError("input size", expected="an input the model accepts", got=f"{input_shape} "
                            f"({first})", fix="check the input size and channels") from None


def _run(model: nn.Module, input_shape: tuple[int, ...], device: torch.device):
    """One forward pass of ``model`` on an input of ``input_shape`` under the field-tracking mode:
    (mode, records, order, calls)."""
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.rand((1, *input_shape), dtype=dtype, device=device)
    stack: list[str] = []
    mode = _FieldMode(stack)
    mode.input_sizes = tuple(input_shape[1:])
    records: dict[str, tuple[nn.Module, object, int]] = {}
    calls: dict[str, int] = {}
    order: list[str] = []
    handles = []
    names = {m: n for n, m in model.named_modules()}

    def pre(module, args):
        stack.append(names.get(module, "?"))

    def post(module, args, out):
        layer = (stack.pop() if stack else "?") or ROOT
        calls[layer] = calls.get(layer, 0) + 1
        if layer not in records:
            tracked = mode.lookup(out)  # its seq now: in-place operations later give the object a new one
            records[layer] = (module, out, tracked.seq if tracked is not None else -1)
            order.append(layer)

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        with eval_mode(model), torch.no_grad():
            mode.track(x, Field.identity(len(input_shape) - 1), tuple(range(2, x.ndim)))
            with mode:
                model(x)
    except UnsupportedGeometryError as err:
        err.traced = (mode, records, order, calls)  # what ran before the refusal: trace_fields reports it
        raise
    finally:
        for handle in handles:
            handle.remove()
    return mode, records, order, calls


def _geometry(ops) -> LayerGeometry | None:
    """Kernel/stride/padding of the grid-changing operations inside one module, when they form one layer.

    Paddings and 1x1 stride-1 operations compose with anything; a module holding two or more real kernels or
    strides (a residual block, say) has no single kernel and gets None.
    """
    if not ops:
        return None
    real = [op for op in ops if any(a.size > 1 or a.stride > 1 for a in op[0])]
    if len(real) > 1:
        return None
    kernel, dilation = (real[0][1], real[0][2]) if real else (ops[0][1], ops[0][2])
    axes = list(ops[0][0])
    for per_axis, _, _ in ops[1:]:
        axes = [a.then(b.size, b.stride, b.padding) for a, b in zip(axes, per_axis)]
    return LayerGeometry(tuple(kernel), tuple(a.stride for a in axes), tuple(a.padding for a in axes),
                         tuple(dilation))
