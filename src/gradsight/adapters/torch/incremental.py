"""Forward passes of images that differ from one reference image only inside a small rectangle each (occlusion's
windows), recomputing only what the rectangles reach, for the private folded copy of a model.

Example:
    >>> runner = near_runner(clone, reference)   # reference: (1, C, H, W), channels-last  # doctest: +SKIP
    >>> runner(batch)                             # clone(batch) to float rounding          # doctest: +SKIP

A convolution's output at one position reads only its window of the input, so where an input changes inside a
rectangle, each layer's output changes only inside a rectangle too: the input's, widened by the kernel's reach and
divided by the stride (the receptive-field algebra run forwards). The reference's values at every layer are
computed once; for each image of a batch only its rectangle of each layer is computed, from a patch of the
reference's values with the image's own values pasted in, and once a rectangle covers a whole map the image's full
map is made and the rest of the network runs as usual. Occlusion of ResNet50 with 32-pixel windows computes about
half of the network's multiply-adds this way (its last two stages see whole maps): 18-19 instead of ~30 ms an
occluded image, occlusion 1.41x sooner than with whole passes (EfficientNet-Lite0 1.24x). This is what Krypton
(Nakandala et al. 2019, "Incremental and Approximate Inference for Faster Occlusion-based Deep CNN Explanations")
does for occlusion; here it is exact: every value is the same sum of the same products (a batch of 8 on ResNet50
and EfficientNet-Lite0 gave bit-identical scores to the copy's whole pass; a different patch size may sum in a
different order, and a SAME convolution here skips the folded copy's extra products with an exact zero). Occlusion
maps, differences of scores, came within 1.3e-4 (ResNet50) and 2.3e-6 (EfficientNet-Lite0) relative L2 of whole
passes in the bench.

The model is read as a torch.fx graph whose leaves are modules without children. A rectangle passes through
convolutions (zero padding, timm's SAME), max and average pooling, BatchNorm in eval mode, elementwise
activations, elementwise sums and products, and concatenation along channels; anything else, and any module
with a hook, gets the images' full maps. Refused (the runner is None, and plain passes run): a graph torch.fx
cannot trace, one with several inputs or an ``out=`` argument, an in-place edit of a tensor (or of what it is a
view of) that something else reads too, a global module hook, and any failure while building. Its first batch
checks itself: image 0 is also run plainly, and a difference beyond rounding (or a failure) refuses the runner
for good.

torch.fx patches ``nn.Module.__call__`` and ``__getattr__`` for the whole process while it traces (once per
folded copy, ~0.1 s). The tracer here records only the calls of the thread that traces: a module called meanwhile
from any other thread (the same copy from the explorer's server, or any model of the user's) runs as it always
does. What is traced is a replica of the copy's module tree without hooks (same parameters and names), so a hook
another thread puts on the shared copy meanwhile never sees the trace. Traces run one at a time, and not while
some other torch.fx trace is under way: occlusion then runs whole passes. torch.fx keeps one record of its patches
for the whole process, so a trace of the user's that starts in another thread during this one can still undo
them out of order; the graph is then dropped (the next call traces again), and torch.fx may leave its wrappers
installed, which then pass every call through.
"""

from __future__ import annotations

import copy
import operator
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .inplace_clamp import InplaceClamp
from .packed_conv import PackedConv
from .same_padding import SamePaddedConv, same_total

# Above this share of the input's area changed, the bookkeeping costs about what it saves.
MAX_CHANGED = 0.5
# A first batch's image 0, run both ways, may differ by this much relative to its largest score (rounding).
SELF_CHECK = 1e-4

_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
                      nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.Mish, nn.Identity, InplaceClamp)
_POINTWISE_IN_EVAL = (nn.Dropout, nn.Dropout2d, nn.BatchNorm2d)  # elementwise only in eval mode
_POINTWISE_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.hardtanh, F.hardtanh_,
                        F.leaky_relu, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.elu, F.mish, torch.sigmoid,
                        F.sigmoid, torch.tanh, torch.clamp, torch.clamp_min, torch.clamp_max}
_POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
                      "clamp_max"}
_BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
                     operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_"}
_VIEW_METHODS = {"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "movedim",
                 "transpose", "swapaxes", "t", "contiguous", "squeeze", "unsqueeze", "expand", "expand_as",
                 "narrow", "select", "chunk", "split", "unbind", "__getitem__", "detach", "to", "float", "type",
                 "type_as", "as_strided"}
_VIEW_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose,
                   torch.narrow, torch.chunk, torch.split, torch.unbind, torch.movedim, torch.select, torch.detach,
                   torch.as_strided, torch.swapaxes, torch.t, operator.getitem}
_VIEW_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Unflatten)
# Functions that edit their input when asked to: the position of their ``inplace`` argument.
_INPLACE_AT = {F.relu: 1, F.relu6: 1, F.hardtanh: 3, F.leaky_relu: 2, F.elu: 2, F.celu: 2, F.selu: 1, F.silu: 1,
               F.hardswish: 1, F.hardsigmoid: 1, F.mish: 1, F.threshold: 3, F.rrelu: 4, F.dropout: 3,
               F.dropout2d: 3, F.alpha_dropout: 3}
_IN_PLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
_TRACE_LOCK = threading.Lock()


@dataclass
class Changed:
    """A batch's changed rectangles of one map: ``crop`` (N, C, h, w), image i's at rows ``top[i]``..., columns
    ``left[i]``...; outside them every image's map is the reference's."""

    crop: torch.Tensor
    top: list[int]
    left: list[int]


@dataclass(frozen=True)
class _Window:
    """A sliding-window layer: kernel extent (dilated), stride and padding before, per axis; the reference's
    input padded as the layer pads it, far enough for every output; the layer run on a patch, unpadded."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    before: tuple[int, int]
    padded: torch.Tensor
    run: object


class _Leaves(fx.Tracer):
    """Modules without children are the graph's leaves: each is called as it is. Module calls and attribute
    reads from threads other than the tracing one, and any after ``finished`` is set, pass straight through
    fx's process-wide patches (harmless should another tracer's out-of-order undo leave them in place)."""

    def __init__(self):
        super().__init__()
        self._thread = threading.get_ident()
        self.finished = False

    def _passes(self) -> bool:
        return self.finished or threading.get_ident() != self._thread

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return next(module.children(), None) is None

    def call_module(self, m, forward, args, kwargs):
        if self._passes():
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._passes():
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _global_hooks() -> bool:
    return any(getattr(nn.modules.module, name, None) for name in
               ("_global_forward_hooks", "_global_forward_pre_hooks"))


def _conv_window(module: nn.Module, size: tuple[int, int]):
    if not (type(module) in (nn.Conv2d, PackedConv, SamePaddedConv) and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)):
        return None
    kernel = tuple(d * (k - 1) + 1 for k, d in zip(module.kernel_size, module.dilation))
    if isinstance(module, SamePaddedConv):  # TensorFlow's SAME: total // 2 before, the rest after
        before = tuple(same_total(n, k, s) // 2 for n, k, s in zip(size, kernel, module.stride))
    else:
        before = _pair(module.padding)

    def run(patch, m=module):  # the module's own weights, never a widened or reordered copy
        return F.conv2d(patch, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
    return kernel, tuple(module.stride), before, 0.0, run


def _pool_window(module: nn.Module):
    if type(module) is nn.MaxPool2d and not module.return_indices:
        k, d = _pair(module.kernel_size), _pair(module.dilation)
        s = _pair(module.stride or module.kernel_size)
        # -inf padding far enough for ceil_mode's last windows gives the same maxima as torch's clipped ones.
        return (tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d)), s, _pair(module.padding), float("-inf"),
                lambda patch: F.max_pool2d(patch, k, s, 0, d))
    if type(module) is nn.AvgPool2d and not module.ceil_mode and module.divisor_override is None and \
            (module.count_include_pad or _pair(module.padding) == (0, 0)):
        k, s = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
        return k, s, _pair(module.padding), 0.0, lambda patch: F.avg_pool2d(patch, k, s, 0)
    return None


def _span(starts: list[int], length: int, kernel: int, stride: int, before: int, out: int) -> tuple[list[int], int]:
    """For each image, the first of ``n`` consecutive outputs (n the same for all, at most ``out``) that hold
    every output whose window meets input positions [start, start + length); returns (firsts, n)."""
    firsts, lengths = [], []
    for start in starts:
        first = max(0, -(-(start + before - kernel + 1) // stride))
        last = min(out - 1, (start + length - 1 + before) // stride)
        firsts.append(first)
        lengths.append(last - first + 1)
    n = min(out, max(1, *lengths))
    return [min(first, out - n) for first in firsts], n


def _gather(source: torch.Tensor, changed: Changed, rows: tuple[list[int], int], cols: tuple[list[int], int],
            offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """(N, C, rows, cols): image i's patch of ``source`` (the reference's map, padded by ``offset`` before)
    from ``rows[0][i]``, ``cols[0][i]``, with the image's changed values pasted over it."""
    (tops, n_rows), (lefts, n_cols) = rows, cols
    out = torch.empty((len(tops), source.shape[1], n_rows, n_cols), dtype=source.dtype, device=source.device,
                      memory_format=torch.channels_last)
    height, width = changed.crop.shape[-2:]
    for i, (top, left) in enumerate(zip(tops, lefts)):
        out[i] = source[0, :, top:top + n_rows, left:left + n_cols]
        r, c = changed.top[i] + offset[0] - top, changed.left[i] + offset[1] - left  # in the patch
        r0, r1, c0, c1 = max(r, 0), min(r + height, n_rows), max(c, 0), min(c + width, n_cols)
        if r0 < r1 and c0 < c1:
            out[i, :, r0:r1, c0:c1] = changed.crop[i, :, r0 - r:r1 - r, c0 - c:c1 - c]
    return out


def _union(changes: list[Changed], size: tuple[int, int]) -> tuple[tuple[list[int], int], tuple[list[int], int]]:
    """One common-size rectangle per image that holds each of ``changes``' rectangles of that image."""
    spans = []
    for axis, starts in ((0, "top"), (1, "left")):
        firsts = [min(getattr(c, starts)[i] for c in changes) for i in range(len(changes[0].top))]
        ends = [max(getattr(c, starts)[i] + c.crop.shape[2 + axis] for c in changes) for i in range(len(firsts))]
        n = max(e - f for f, e in zip(firsts, ends))
        spans.append(([min(f, size[axis] - n) for f in firsts], n))
    return spans[0], spans[1]


def changed_rectangles(x: torch.Tensor, reference: torch.Tensor) -> Changed | None:
    """The common-size rectangles of ``x`` (N, C, H, W) where its images differ from ``reference`` (1, C, H, W),
    or None where they cover more than MAX_CHANGED of the area."""
    height, width = x.shape[-2:]
    differs = (x != reference).any(dim=1)
    spans = []
    for axis, size in ((2, height), (1, width)):
        hit = differs.any(dim=axis)  # (N, size)
        index = torch.arange(size, device=x.device)
        first = torch.where(hit, index, size).amin(dim=1)
        last = torch.where(hit, index, -1).amax(dim=1)
        first = torch.where(last < 0, 0, first).tolist()  # an unchanged image: one pixel, computed for nothing
        last = torch.where(last < 0, 0, last).tolist()
        n = max(b - a + 1 for a, b in zip(first, last))
        spans.append(([min(a, size - n) for a in first], n))
    (tops, n_rows), (lefts, n_cols) = spans
    if n_rows * n_cols > MAX_CHANGED * height * width:
        return None
    crop = torch.empty((len(x), x.shape[1], n_rows, n_cols), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)
    for i, (top, left) in enumerate(zip(tops, lefts)):
        crop[i] = x[i, :, top:top + n_rows, left:left + n_cols]
    return Changed(crop, tops, lefts)


def _edits_in_place(node: fx.Node, module: nn.Module | None) -> bool:
    if node.op == "call_module":
        return isinstance(module, InplaceClamp) or getattr(module, "inplace", False) is True
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        at = _INPLACE_AT.get(node.target)
        return (node.target in _IN_PLACE_OPERATORS or getattr(node.target, "__name__", "").endswith("_")
                or node.kwargs.get("inplace") is True
                or (at is not None and len(node.args) > at and node.args[at] is True))
    return False


def _aliases_input(node: fx.Node, module: nn.Module | None) -> bool:
    """Whether the node's output may share memory with its first input."""
    if node.op == "call_module":
        return type(module) in _VIEW_MODULES or _edits_in_place(node, module)
    if node.op == "call_method":
        return node.target in _VIEW_METHODS or _edits_in_place(node, module)
    if node.op == "call_function":
        return node.target in _VIEW_FUNCTIONS or _edits_in_place(node, module)
    return False


def _another_fx_trace() -> bool:
    """Whether some torch.fx trace has its patches in place now (torch's own record of them)."""
    return getattr(getattr(fx, "_symbolic_trace", None), "CURRENT_PATCHER", None) is not None


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def _hookless_replica(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module``'s tree without hooks: the same parameters, buffers, attributes and names."""
    replica = copy.copy(module)
    for name in _HOOK_DICTS:
        if name in module.__dict__:
            replica.__dict__[name] = type(module.__dict__[name])()
    replica.__dict__["_modules"] = {k: None if m is None else _hookless_replica(m) for k, m in module._modules.items()}
    return replica


def _module_entry_points() -> tuple:
    """What torch.fx patches while it traces; changed by a trace that undid another's patches out of order."""
    return nn.Module.__call__, nn.Module.__getattr__


def traced_graph(clone: nn.Module) -> tuple[fx.Graph, frozenset] | None:
    """``clone``'s torch.fx graph (leaves: modules without children) and the nodes whose tensors an in-place
    step edits later, kept on the copy; None where it cannot be traced (see the module's docstring)."""
    if "_gradsight_fx" not in clone.__dict__:
        if _another_fx_trace():  # before the lock: a trace of this thread's own (nested) would wait forever
            return None
        with _TRACE_LOCK:
            if "_gradsight_fx" in clone.__dict__:  # another thread traced it while this one waited
                return clone.__dict__["_gradsight_fx"]
            if _another_fx_trace():
                return None
            patched = _module_entry_points()
            traced = _trace(clone)
            if _another_fx_trace() or _module_entry_points() != patched:
                return None  # another trace interleaved with this one (see the module's docstring)
            clone.__dict__["_gradsight_fx"] = traced
    return clone.__dict__["_gradsight_fx"]


def _trace(clone: nn.Module) -> tuple[fx.Graph, frozenset] | None:
    tracer = _Leaves()
    try:
        graph = tracer.trace(_hookless_replica(clone))
    except Exception:  # noqa: BLE001 - torch.fx refuses control flow on values, among much else
        return None
    finally:
        tracer.finished = True
    if sum(node.op == "placeholder" for node in graph.nodes) != 1:
        return None
    edited_later = set()
    for node in graph.nodes:
        if "out" in node.kwargs:
            return None
        module = clone.get_submodule(node.target) if node.op == "call_module" else None
        if not _edits_in_place(node, module) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        # The kept reference values of the edited tensor (and of what it is a view of) would be stale for a
        # second reader: only a sole reader may edit, and every tensor up the chain is kept as a copy.
        edited = node.args[0]
        while True:
            if len(edited.users) != 1:
                return None
            edited_later.add(edited)
            above = clone.get_submodule(edited.target) if edited.op == "call_module" else None
            if not (_aliases_input(edited, above) and edited.args and isinstance(edited.args[0], fx.Node)):
                break
            edited = edited.args[0]
    return graph, frozenset(edited_later)


def _agrees(ours: torch.Tensor, plain: torch.Tensor) -> bool:
    """Equal shapes and scores within SELF_CHECK of the largest finite one (NaN where the plain pass has NaN)."""
    if ours.shape != plain.shape:
        return False
    finite = plain[torch.isfinite(plain)]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    return bool(torch.isclose(ours, plain, rtol=0.0, atol=SELF_CHECK * scale, equal_nan=True).all())


class NearRunner:
    """Runs the folded copy ``clone`` on batches whose images differ from ``reference`` in a rectangle each
    (see the module's docstring); a batch of anything else runs plainly. Threads may share it."""

    def __init__(self, clone: nn.Module, traced: tuple[fx.Graph, frozenset], reference: torch.Tensor):
        (self.graph, self._edited_later), self.clone, self.reference = traced, clone, reference
        softmaxes = getattr(clone, "gradsight_softmaxes", None)  # what gradients.model_scores watches
        self.gradsight_softmaxes = softmaxes if softmaxes is not None else tuple(
            m for m in clone.modules() if isinstance(m, nn.Softmax))
        self.gradsight_stateless = True  # made only from a copy that keeps no state; its own is read-only
        self.refused: str | None = None
        self.checked = False
        self._modules = {node: clone.get_submodule(node.target) for node in self.graph.nodes
                         if node.op == "call_module"}
        self._reference_values()

    # -- the reference's pass, and what each node can do with rectangles
    def _reference_values(self) -> None:
        env: dict[fx.Node, object] = {}
        self._constant: dict[fx.Node, object] = {}  # nodes that do not depend on the input
        self._clean: dict[fx.Node, torch.Tensor] = {}  # the reference's maps, as each reader sees them
        self._kind: dict[fx.Node, str] = {}
        self._window: dict[fx.Node, _Window] = {}
        downstream: set[fx.Node] = set()
        for node in self.graph.nodes:
            if node.op == "output":
                self._output = node.args[0]
                if not (isinstance(self._output, fx.Node) and isinstance(env[self._output], torch.Tensor)):
                    self.refused = "the model's output is not one tensor"
                break
            if node.op == "placeholder":
                value = self.reference.clone()  # the model's first step may edit its input in place
                downstream.add(node)
            else:
                value = self._execute(node, fx.node.map_arg(node.args, env.__getitem__),
                                      fx.node.map_arg(node.kwargs, env.__getitem__))
                if any(arg in downstream for arg in node.all_input_nodes):
                    downstream.add(node)
            env[node] = value
            if node not in downstream:
                self._constant[node] = value
            elif isinstance(value, torch.Tensor):
                # A copy where an in-place step edits the tensor later (through a view, perhaps).
                self._clean[node] = value.clone() if node in self._edited_later else value
        for node in downstream:
            self._kind[node] = self._classify(node, downstream)

    def _classify(self, node: fx.Node, downstream: set[fx.Node]) -> str | None:
        out = self._clean.get(node)
        if out is None or out.ndim != 4 or node.op not in ("call_module", "call_function", "call_method"):
            return None
        dirty = [a for a in node.all_input_nodes if a in downstream]
        if not all(a in self._clean and self._clean[a].ndim == 4 for a in dirty):
            return None
        first = node.args[0] if node.args else None
        module = self._modules.get(node)
        if node.op == "call_module":
            if _hooked(module) or len(node.args) != 1 or node.kwargs or first not in dirty:
                return None
            size, out_size = tuple(self._clean[first].shape[-2:]), tuple(out.shape[-2:])
            if type(module) in _POINTWISE_MODULES or (type(module) in _POINTWISE_IN_EVAL and not module.training
                                                      and getattr(module, "running_mean", 0) is not None):
                return "pointwise" if self._clean[first].shape == out.shape else None
            window = _conv_window(module, size) or _pool_window(module)
            if window is None:
                return None
            kernel, stride, before, fill, run = window
            after = [max(0, (o - 1) * s + k - b - n) for o, s, k, b, n in zip(out_size, stride, kernel, before, size)]
            padded = F.pad(self._clean[first], (before[1], after[1], before[0], after[0]), value=fill)
            self._window[node] = _Window(kernel, stride, before, padded, run)
            return "window"
        target = node.target
        pointwise = target in (_POINTWISE_FUNCTIONS if node.op == "call_function" else _POINTWISE_METHODS)
        if pointwise:  # no tensor but the map (a constant tensor could broadcast over space)
            return "pointwise" if node.all_input_nodes == [first] and self._clean[first].shape == out.shape \
                else None
        binary = target in (_BINARY_FUNCTIONS if node.op == "call_function" else _BINARY_METHODS)
        if binary and len(node.args) == 2 and set(node.kwargs) <= {"alpha"}:
            operands = [a for a in node.args if isinstance(a, fx.Node)]
            if all(a in dirty and self._clean[a].shape == out.shape for a in operands) and \
                    all(isinstance(a, (int, float)) for a in node.args if not isinstance(a, fx.Node)):
                return "binary"
            return None
        if target is torch.cat and node.op == "call_function" and isinstance(first, (list, tuple)) and \
                all(a in dirty for a in first) and node.kwargs.keys() <= {"dim"}:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim in (1, -3) and all(self._clean[a].shape[-2:] == out.shape[-2:] for a in first):
                return "cat"
        return None

    def _execute(self, node: fx.Node, args, kwargs):
        if node.op == "call_module":
            return self._modules[node](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            value = self.clone
            for part in node.target.split("."):
                value = getattr(value, part)
            return value
        raise ValueError(f"unexpected graph node {node.op}")

    # -- a batch
    def __call__(self, x: torch.Tensor):
        if self.refused or _global_hooks() or x.shape[1:] != self.reference.shape[1:] or \
                x.dtype != self.reference.dtype or x.device != self.reference.device:
            return self.clone(x)
        changed = changed_rectangles(x, self.reference)
        if changed is None:
            return self.clone(x)
        try:
            out = self.run(changed)
        except Exception as err:  # noqa: BLE001 - a case the rectangles do not cover: plain passes from now on
            self.refused = f"a batch failed: {type(err).__name__}: {err}"
            return self.clone(x)
        if not self.checked:
            if not _agrees(out[:1], self.clone(x[:1].clone())):
                self.refused = "its first batch did not match a plain pass"
                return self.clone(x)
            self.checked = True
        return out

    def run(self, changed: Changed) -> torch.Tensor:
        """The model's output for the batch whose changed rectangles of the input are ``changed`` (no check)."""
        env: dict[fx.Node, object] = {}
        for node in self.graph.nodes:
            if node.op == "output":
                return self._full(self._output, env)
            if node.op == "placeholder":
                env[node] = changed
            elif node in self._constant:
                env[node] = self._constant[node]
            else:
                env[node] = self._step(node, env)
        raise ValueError("graph without output")

    def _full(self, node: fx.Node, env: dict) -> torch.Tensor:
        """The node's value for the whole batch, made once from its rectangles (and kept in ``env``)."""
        value = env[node]
        if isinstance(value, Changed):
            clean = self._clean[node]
            value = env[node] = _gather(clean, value, ([0] * len(value.top), clean.shape[-2]),
                                        ([0] * len(value.left), clean.shape[-1]))
        return value

    def _finish(self, node: fx.Node, changed: Changed):
        """A rectangle that has grown to the whole map is the map."""
        if tuple(changed.crop.shape[-2:]) == tuple(self._clean[node].shape[-2:]):
            return changed.crop
        return changed

    def _step(self, node: fx.Node, env: dict):
        kind = self._kind.get(node)
        if node in self._modules and _hooked(self._modules[node]):
            kind = None  # a hook added since: it sees the whole maps the model makes
        values = [env[a] for a in node.all_input_nodes]
        if kind is None or not any(isinstance(v, Changed) for v in values) or \
                any(isinstance(v, torch.Tensor) and a not in self._constant
                    for a, v in zip(node.all_input_nodes, values)):
            # Whole maps: every changed input made whole first.
            for a in node.all_input_nodes:
                if isinstance(env[a], Changed):
                    self._full(a, env)
            return self._execute(node, fx.node.map_arg(node.args, env.__getitem__),
                                 fx.node.map_arg(node.kwargs, env.__getitem__))
        first = node.args[0]
        if kind == "pointwise":
            changed = env[first]
            args = (changed.crop,) + tuple(fx.node.map_arg(node.args[1:], env.__getitem__))
            out = self._execute(node, args, fx.node.map_arg(node.kwargs, env.__getitem__))
            return self._finish(node, Changed(out, changed.top, changed.left))
        if kind == "window":
            changed, window = env[first], self._window[node]
            out_size = self._clean[node].shape[-2:]
            spans = [_span(starts, changed.crop.shape[2 + axis], window.kernel[axis], window.stride[axis],
                           window.before[axis], out_size[axis])
                     for axis, starts in ((0, changed.top), (1, changed.left))]
            # Patch positions in the padded map: output o's window starts at o * stride there.
            patch = _gather(window.padded, changed,
                            *[([o * window.stride[axis] for o in firsts], (n - 1) * window.stride[axis]
                               + window.kernel[axis]) for axis, (firsts, n) in enumerate(spans)],
                            offset=window.before)
            return self._finish(node, Changed(window.run(patch), spans[0][0], spans[1][0]))
        operands = first if kind == "cat" else node.args
        changes = [env[a] for a in operands if isinstance(a, fx.Node)]
        rows, cols = _union(changes, tuple(self._clean[node].shape[-2:]))

        def aligned(a):
            if not isinstance(a, fx.Node):
                return a
            c = env[a]
            if c.top == rows[0] and c.left == cols[0] and tuple(c.crop.shape[-2:]) == (rows[1], cols[1]):
                return c.crop
            return _gather(self._clean[a], c, rows, cols)
        if kind == "cat":
            args = ([aligned(a) for a in first],) + tuple(node.args[1:])
        else:
            args = tuple(aligned(a) for a in node.args)
        out = self._execute(node, args, fx.node.map_arg(node.kwargs, env.__getitem__))
        return self._finish(node, Changed(out, rows[0], cols[0]))


def near_runner(clone: nn.Module, reference: torch.Tensor, keep: dict | None = None) -> NearRunner | None:
    """The runner of the folded copy ``clone`` for images near ``reference`` (1, C, H, W); None where it is
    refused. ``keep``: a dict that lives as long as the model is taken as fixed (``folding.block_answers``),
    where the runner waits for the next call with an equal reference (and a refusal for the next reference);
    its reference values (ResNet50: 146 MiB) are not kept on the copy beyond that."""
    if _global_hooks():
        return None
    keep = {} if keep is None else keep
    traced = traced_graph(clone)
    if traced is None or keep.get("near_refused") is clone:
        return None
    runner = keep.get("near_runner")
    if runner is None or runner.clone is not clone or runner.reference.shape != reference.shape or \
            not torch.equal(runner.reference, reference):
        try:
            runner = keep["near_runner"] = NearRunner(clone, traced, reference.clone())
        except Exception:  # noqa: BLE001 - a graph the reference pass cannot follow: plain passes
            keep["near_refused"] = clone
            return None
    if runner.refused:
        keep["near_refused"] = clone
        return None
    return runner
