"""PyTorch gradients of class scores: the score of a model (stepping over a final softmax), its gradient with
respect to the input or to a layer's activations, and forward-only scores.

Example:
    >>> import numpy as np, torch                                            # doctest: +SKIP
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))  # doctest: +SKIP
    >>> score_gradient(net, np.ones((1, 2, 2, 3), np.float32), [None]).gradient.shape   # doctest: +SKIP
    (1, 2, 2, 3)

Arrays cross this boundary as NumPy float32 in channels-last layout (N, H, W, C); inside, PyTorch works in
NCHW. The model is run in eval mode (BatchNorm statistics, no dropout) and every module's ``training`` flag is
restored afterwards; only the input's gradient is requested, so no parameter's ``.grad`` is touched. A model
whose output comes from a final softmax (``nn.Softmax``, ``torch.softmax``, ``F.softmax``, ``Tensor.softmax``,
or their ``log_softmax``) gives its logits as the softmax's input; one whose output rows are probabilities
without a softmax that could be found is refused for 'logit' and differentiated as it is for 'prob'.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ...errors import BadInputError
from ..common import (
    LayerGradient,
    ScoreGradient,
    avoid_triton_tensorflow_clash,
    resolve_targets,
    rows_are_probabilities,
)
from .folding import block_answers, folded_copy
from .incremental import near_runner
from .layers import eval_mode, resolve_module
from .two_streams import in_two_streams

avoid_triton_tensorflow_clash("torch")  # before torch runs anything that imports Triton


def to_input_array(tensor: torch.Tensor) -> np.ndarray:
    """A user's NCHW (or CHW) tensor as a float32 NHWC array; the tensor itself is not touched."""
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4:
        raise BadInputError("input tensor", expected="shape (N, C, H, W) or (C, H, W)",
                            got=f"shape {tuple(tensor.shape)}")
    return tensor.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy().copy()


def score_gradient(model: nn.Module, inputs: np.ndarray, targets: Sequence[int | None], score: str = "logit",
               fast: bool = True) -> ScoreGradient:
    """d score[target] / d input for a batch; ``None`` targets become the predicted class."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    # NHWC arrays viewed as NCHW are channels-last tensors already; oneDNN convolutions and their backward
    # run faster so (ResNet50, batch 8, 2 cores: ~20% less time than contiguous NCHW, bench/saliency.py).
    x = torch.from_numpy(np.ascontiguousarray(inputs)).permute(0, 3, 1, 2).to(device, dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    with eval_mode(model):
        runner = folded_copy(model, x[:1]) if fast else None
        with torch.enable_grad():
            x = x.clone(memory_format=torch.channels_last).requires_grad_(True)
            logits, chosen, scores = _scores(*model_scores(runner or model, x), len(inputs), targets, score)
            (grad,) = torch.autograd.grad(scores.sum(), x)
    return ScoreGradient(logits.detach().cpu().numpy(), chosen.cpu().numpy(),
                         grad.permute(0, 2, 3, 1).cpu().numpy())


_SOFTMAXES = frozenset({torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax, torch.special.softmax,
                        torch.log_softmax, torch.nn.functional.log_softmax, torch.Tensor.log_softmax,
                        torch.special.log_softmax})


class _SoftmaxCalls(TorchFunctionMode):
    """Records (output, input, dim) of every softmax the model calls, however it is spelt."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor, int | None]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _SOFTMAXES and args and isinstance(args[0], torch.Tensor):
            self.seen.append((out, args[0], kwargs.get("dim", args[1] if len(args) > 1 else None)))
        return out


def _over_classes(dim, out: torch.Tensor) -> bool:
    # F.softmax without dim picks axis 1 of a 2-D tensor (its legacy rule), the class axis
    return out.ndim == 2 and (dim is None or (isinstance(dim, int) and dim % 2 == 1))


def model_scores(model: nn.Module, x: torch.Tensor, watch: bool | None = None) -> tuple[torch.Tensor, bool]:
    """(scores, stepped): the model's output, or — when that output is what a final softmax over the class
    axis returned — the softmax's input (the logits: pretrained models often end in a softmax, and its
    gradient saturates) and True. Softmaxes are found as nn.Softmax modules and as calls of torch.softmax,
    F.softmax, Tensor.softmax or their log_softmax, whichever the forward uses.

    Watching every torch call costs time on models with many small operations, so with gradients on, the
    calls are watched only in a second run, when the output's grad_fn shows that a softmax made it. Without
    gradients they are watched unless ``watch=False`` (``predict`` watches a call's first batch, see there).
    """
    # Each run gets a copy of x (gradients still reach x): the model's first operation may be in place.
    watch = not torch.is_grad_enabled() if watch is None else watch
    out, found = _run_watched(model, x.clone(), watch)
    if found is None and not watch and isinstance(out, torch.Tensor) and \
            type(out.grad_fn).__name__ in ("SoftmaxBackward0", "LogSoftmaxBackward0"):
        out, found = _run_watched(model, x.clone(), True)
    return (found, True) if found is not None else (out, False)


def _run_watched(model: nn.Module, x: torch.Tensor, watch: bool):
    """(output, the input of the final class softmax or None); ``watch``: also look for functional ones."""
    seen: list[tuple[torch.Tensor, torch.Tensor, int | None]] = []
    softmaxes = getattr(model, "gradsight_softmaxes", None)  # listed once in the folded copy, which never changes
    if softmaxes is None:  # (a pass over every module costs 0.7 ms, an eighth of a forward pass at batch 4)
        softmaxes = [m for m in model.modules() if isinstance(m, nn.Softmax)]
    handles = [m.register_forward_hook(lambda mod, args, out: seen.append((out, args[0], mod.dim)))
               for m in softmaxes]
    calls = _SoftmaxCalls()
    try:
        with calls if watch else contextlib.nullcontext():
            out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if isinstance(out, torch.Tensor):
        for produced, logits, dim in seen + calls.seen:
            if produced is out and _over_classes(dim, out):
                return out, logits
    return out, None


def _scores(out, stepped: bool, batch: int, targets, score: str):
    """(logits, chosen targets, the scores to differentiate) from the model's output (see ``model_scores``)."""
    out = _checked_logits(out, batch)
    if not stepped and rows_are_probabilities(out.detach().cpu().numpy()):
        return _probability_scores(out, list(targets), score)
    chosen = _resolve_targets(list(targets), out)
    return out, chosen, _select(out, chosen, score)


def class_logits(out, stepped: bool) -> torch.Tensor:
    """Logits from the model's output: log(probabilities) when it returned probability rows no softmax of
    which could be stepped over (their softmax is the output again)."""
    if not stepped and isinstance(out, torch.Tensor) and rows_are_probabilities(out.detach().cpu().numpy()):
        return out.clamp_min(torch.finfo(out.dtype).tiny).log()
    return out


def _probability_scores(probs: torch.Tensor, targets, score: str):
    """(logits, chosen, scores) for an output whose rows are probabilities and whose softmax could not be
    found: 'logit' would differentiate a probability and is refused; 'prob' is the output itself and
    'logprob' its log. The logits reported are log(probabilities), whose softmax is the output again."""
    if score == "logit":
        raise BadInputError(
            "score 'logit'", expected="a model whose forward returns logits (class scores before a softmax)",
            got="an output whose rows are probabilities (values in 0..1 that sum to 1) from a softmax gradsight "
                "could not step over, so the 'logit' would be a probability",
            fix="return the logits from forward (end it before the softmax), or ask for score='prob' (the "
                "output itself) or score='logprob' (its log)")
    logits = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
    chosen = _resolve_targets(targets, logits)
    scores = probs.gather(1, chosen[:, None])[:, 0]
    if score == "logprob":
        if not bool((scores > 0).all()):
            raise BadInputError("score 'logprob'", expected="a target class with a probability above 0",
                                got="probability 0, whose log is -infinity", fix="use score='prob'")
        scores = scores.log()
    elif score != "prob":
        raise BadInputError("score", expected="'logit', 'prob' or 'logprob'", got=repr(score))
    return logits, chosen, scores


def _checked_logits(out, batch: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise BadInputError("model output", expected="a tensor of class scores (N, classes)",
                            got=type(out).__name__, fix="wrap the model so that forward returns the logits")
    if out.ndim != 2 or out.shape[0] != batch:
        raise BadInputError("model output", expected=f"class scores of shape ({batch}, classes)",
                            got=f"shape {tuple(out.shape)}", fix="pass a classifier (or wrap it to return logits)")
    if not torch.isfinite(out).all():
        raise BadInputError("model output", expected="finite class scores", got="NaN or infinity",
                            fix="check the input values and the model's weights")
    return out


def _resolve_targets(targets: list[int | None], logits: torch.Tensor) -> torch.Tensor:
    chosen = resolve_targets(targets, logits.shape[1], logits.detach().cpu().numpy())
    return torch.tensor(chosen, device=logits.device)


def _select(logits: torch.Tensor, chosen: torch.Tensor, score: str) -> torch.Tensor:
    if score == "prob":
        logits = logits.softmax(dim=1)
    elif score == "logprob":
        logits = logits.log_softmax(dim=1)
    elif score != "logit":
        raise BadInputError("score", expected="'logit', 'prob' or 'logprob'", got=repr(score))
    return logits.gather(1, chosen[:, None])[:, 0]


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return device, dtype


def as_nchw(inputs: np.ndarray, model: nn.Module) -> torch.Tensor:
    """NHWC float32 array -> NCHW (channels-last memory) tensor on the model's device and dtype."""
    device, dtype = _device_dtype(model)
    x = torch.from_numpy(np.ascontiguousarray(inputs)).permute(0, 3, 1, 2).to(device, dtype)
    return x.contiguous(memory_format=torch.channels_last)


def predict(model: nn.Module, inputs: np.ndarray, batch_size: int = 64, fast: bool = False,
            near: np.ndarray | None = None) -> np.ndarray:
    """Pre-softmax class scores (N, K) of ``inputs``, forward only, ``batch_size`` images at a time.

    Example:
        >>> predict(net, x, batch_size=8, fast=True).argmax(axis=1)    # the predicted classes  # doctest: +SKIP

    ``fast``: run the model's cached BatchNorm-folded copy (``folding.folded_copy``, the one the gradient
    fast path uses: built once, reused while the model is exactly as it was) under ``torch.inference_mode``.
    Its logits equal the model's to float32 rounding (EfficientNet-Lite0: within 1e-5). Models without
    BatchNorm or with hooks run as they are. ``fast=False`` runs the model itself. On the CPU the copy's batches
    after the watched ones run as two streams on half of torch's threads each (``two_streams``).

    ``near`` (H, W, C): an image from which each input differs only inside a small rectangle (occlusion); the
    folded copy then computes only what the rectangles reach (``incremental.near_runner``, equal to rounding)
    where its graph allows, and runs whole passes otherwise.
    """
    out = []
    with eval_mode(model):
        # Built (or found) outside inference mode: the cached copy is shared with the gradient fast path, so it
        # is made of ordinary tensors.
        runner = (folded_copy(model, as_nchw(inputs[:1], model)) if fast and len(inputs) else None) or model
        with torch.inference_mode() if fast else torch.no_grad():
            memo = block_answers(model)
            if near is not None and runner is not model and getattr(runner, "gradsight_stateless", False):
                runner = near_runner(runner, as_nchw(near[None], model), memo) or runner
            # Watching every torch call for a functional softmax adds ~60% to a pass on EfficientNet-Lite0, so
            # only the first batch is watched (the first of an unchanged_during block, which remembers what it
            # found); the rest are too only if it found one, or if their output rows look like probabilities
            # (then the batch is run again, watched).
            watch = memo is None or memo.get("watch_softmax", True)
            starts = list(range(0, len(inputs), batch_size))
            batch = lambda start: as_nchw(inputs[start:start + batch_size], model)  # noqa: E731

            def logits(start, scores, stepped, watched):
                if not (watched or stepped) and _probability_rows(scores):
                    scores, stepped = model_scores(runner, batch(start), watch=True)
                rows = min(batch_size, len(inputs) - start)
                return _checked_logits(class_logits(scores, stepped), rows).float().cpu().numpy()

            def unwatched(start):
                with torch.inference_mode():  # thread-local: set again in a stream's thread
                    return model_scores(runner, batch(start), watch=False)

            # The folded copy is private; its unwatched passes may run as two streams where all its modules are
            # known to keep no state between calls (two_streams).
            streams = runner is not model and getattr(runner, "gradsight_stateless", False) and \
                _device_dtype(model)[0].type == "cpu"
            for i, start in enumerate(starts):
                if streams and not watch and len(starts) - i >= 2:
                    rest = starts[i:]
                    passes = in_two_streams(unwatched, rest)
                    out += [logits(s, scores, stepped, watched=False) for s, (scores, stepped) in zip(rest, passes)]
                    break
                scores, stepped = model_scores(runner, batch(start), watch=watch)
                if watch and memo is not None:
                    memo["watch_softmax"] = stepped
                out.append(logits(start, scores, stepped, watched=watch))
                watch = watch and stepped
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _probability_rows(out) -> bool:
    return isinstance(out, torch.Tensor) and out.ndim == 2 and rows_are_probabilities(out.detach().cpu().numpy())


def layer_gradient(model: nn.Module, layer, inputs: np.ndarray, targets: Sequence[int | None],
                   score: str = "logit") -> LayerGradient:
    """Activations A of ``layer`` and d score[target] / dA, channels last; one forward and one backward pass."""
    name, module = resolve_module(model, layer)
    captured: list[torch.Tensor] = []

    def keep(mod, args, out):
        if not isinstance(out, torch.Tensor):
            return None
        captured.append(out)
        # Later in-place operations (ReLU(inplace=True)) must change a copy, not the activations we return.
        return out.clone()

    handle = module.register_forward_hook(keep)
    try:
        with eval_mode(model), torch.enable_grad():
            x = as_nchw(inputs, model).requires_grad_(True)
            out, stepped = model_scores(model, x)
            if not captured:
                raise BadInputError(f"layer {name!r}", expected="a module that runs in the forward pass and "
                                    "returns a tensor", got="a module that never ran or returned no tensor",
                                    fix="pick a layer from `gradsight rf MODEL`")
            if len(captured) > 1:
                # A module reused in one pass (torchvision's BasicBlock calls self.relu twice) has several
                # outputs; which one the name means is ambiguous, so neither is guessed.
                parent = name.rpartition(".")[0]
                raise BadInputError(f"layer {name!r}", expected="a module that runs once per forward pass",
                                    got=f"a module called {len(captured)} times (one module reused in the pass)",
                                    fix=f"pick the block around it ({parent!r}) or a layer that runs once"
                                    if parent else "pick a layer that runs once (see `gradsight rf MODEL`)")
            activations = captured[0]
            if activations.ndim != 4:
                raise BadInputError(f"layer {name!r}", expected="a spatial feature map (N, channels, rows, cols)",
                                    got=f"output of shape {tuple(activations.shape)}",
                                    fix="pick a convolutional layer (see `gradsight rf MODEL`)")
            logits, chosen, scores = _scores(out, stepped, len(inputs), targets, score)
            (grad,) = torch.autograd.grad(scores.sum(), activations)
    finally:
        handle.remove()
    nhwc = lambda t: t.detach().permute(0, 2, 3, 1).float().cpu().numpy()  # noqa: E731
    return LayerGradient(nhwc(activations), nhwc(grad), logits.detach().float().cpu().numpy(),
                         chosen.cpu().numpy())
