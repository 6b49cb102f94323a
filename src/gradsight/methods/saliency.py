"""Vanilla-gradient saliency (Simonyan et al. 2013): max over colour channels of |d score / d input|.

Example:
    >>> import gradsight                                               # doctest: +SKIP
    >>> result = gradsight.saliency("efficientnet_lite0", "photo.jpg")  # doctest: +SKIP
    >>> result.saliency.shape, result.top_k(0, 1)[0][1]                # doctest: +SKIP
    ((1, 224, 224), 'water ouzel, dipper')

The maps are the registered ``gradient`` method's: a SaliencyResult is the AttributionResult of
``gradsight.attribute(model, images, method="gradient")``, with ``.saliency``/``.gradient`` as the names of its
``maps``/``attribution``; ``saliency_batches`` yields one per batch as soon as it is computed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..adapters.discovery import adapter_for
from ..errors import BadInputError
from ..inputs import Batch, prepare_inputs
from ..models.registry import as_loaded_model
from ..models.spec import LoadedModel
from ..preprocess import Preprocess
from ..results import SaliencyResult
from .job import AttributionJob, target_list
from .registry import get_method, method_options

SCORES = ("logit", "prob", "logprob")


def _check_channels(loaded: LoadedModel, batch) -> None:
    """A photo is RGB: refuse it, before anything runs, for a model that takes another number of channels."""
    shape = loaded.spec.model_input_shape()
    if shape is None or shape[0] == 3 or "photo" not in batch.kinds:
        return
    source = batch.sources[batch.kinds.index("photo")]
    channels = f"{shape[0]} channel" + ("s" if shape[0] != 1 else "")
    raise BadInputError(f"model {loaded.name}", expected=f"an input with {channels} ({' x '.join(map(str, shape))},"
                        " channels x rows x cols)", got=f"an RGB photo ({source})",
                        fix=f"pass model input as a float array (N, rows, cols, {shape[0]}) with "
                            "input_kind='model_input'")


@dataclass(frozen=True)
class _Plan:
    loaded: LoadedModel
    batch: Batch
    targets: list[int | None]


def _plan(model, images, target, score, batch_size, preprocess, input_kind) -> _Plan:
    """Everything checked and read before the first gradient: a bad input fails before any work or file."""
    if score not in SCORES:
        raise BadInputError("score", expected=f"one of {', '.join(SCORES)}", got=repr(score))
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise BadInputError("batch_size", expected="a whole number >= 1", got=repr(batch_size))
    loaded = as_loaded_model(model, preprocess=preprocess)
    batch = prepare_inputs(images, loaded.preprocess, input_kind)
    _check_channels(loaded, batch)
    targets = target_list(target, len(batch.arrays))
    if loaded.class_names is not None:
        for t in targets:
            if t is not None and not 0 <= t < len(loaded.class_names):
                raise BadInputError("target class", expected=f"an index in 0..{len(loaded.class_names) - 1}",
                                    got=str(t), fix="pass a class index the model has, or 'auto'")
    return _Plan(loaded, batch, targets)


def _results(plan: _Plan, score: str, fast: bool, batch_size: int) -> Iterator[SaliencyResult]:
    # The registered "gradient" method computes the maps, so a SaliencyResult is exactly what
    # gradsight.attribute(method="gradient") gives (the tests compare them).
    method = get_method("gradient")
    options = method_options(method, {})
    adapter = adapter_for(plan.loaded.module)
    batch = plan.batch
    for start in range(0, len(batch.arrays), batch_size):
        part = slice(start, start + batch_size)
        job = AttributionJob(adapter, plan.loaded.module, batch.arrays[part], tuple(plan.targets[part]), score, fast,
                             plan.loaded.preprocess)
        out = method.fn(job, **options)
        yield SaliencyResult(
            maps=out.maps,
            attribution=out.attribution,
            options=dict(options),
            display=method.display,
            targets=out.targets,
            score=score,
            logits=out.logits,
            model_name=plan.loaded.name,
            framework=adapter.name,
            class_names=plan.loaded.class_names,
            preprocess=plan.loaded.preprocess,
            sources=batch.sources[part],
            geometries=batch.geometries[part],
            conversions=batch.conversions[part],
            photos=batch.photos[part],
            input_kinds=batch.kinds[part],
            orientations=batch.orientations[part],
            fast=fast,
        )


def _concatenate(parts: list[SaliencyResult]) -> SaliencyResult:
    if len(parts) == 1:
        return parts[0]
    joined = {name: np.concatenate([getattr(p, name) for p in parts])
              for name in ("maps", "attribution", "targets", "logits")}
    joined.update({name: sum((getattr(p, name) for p in parts), ())
                   for name in ("sources", "geometries", "conversions", "photos", "input_kinds", "orientations")})
    return replace(parts[0], **joined)


def saliency(model: Any, images: Any = None, *, target: Any = None, score: str = "logit", fast: bool = True,
             batch_size: int = 8, preprocess: Preprocess | None = None, input_kind: str = "auto",
             progress: bool = False) -> SaliencyResult:
    """Saliency maps for ``images`` (default: the bundled ouzel.png) under ``model``.

    ``model``: a name (``"efficientnet_lite0"``), a ``LoadedModel`` or a ``torch.nn.Module``.
    ``target``: ``None``/``"auto"`` (the predicted class), a class index, or one per image.
    ``score``: ``"logit"`` (pre-softmax, the default: probabilities saturate), ``"prob"`` or ``"logprob"``.
    ``fast``: fold BatchNorm into convolutions for the gradient pass (checked against the plain model).
    ``input_kind``: what arrays and tensors are: ``"auto"`` (uint8 is a photo; float is model input unless it
    could be a photo — 3 channels, all values in 0..255 —, which is refused), ``"photo"`` (values 0..255),
    ``"photo01"`` (values 0..1) or ``"model_input"`` (already preprocessed). Paths and PIL images are photos.
    Images are processed ``batch_size`` at a time to bound memory.
    """
    plan = _plan(model, images, target, score, batch_size, preprocess, input_kind)
    batches = -(-len(plan.batch.arrays) // batch_size)
    parts = list(tqdm(_results(plan, score, fast, batch_size), total=batches, desc="saliency", unit="batch",
                      disable=not progress or batches < 2))
    return _concatenate(parts)


def saliency_batches(model: Any, images: Any = None, *, target: Any = None, score: str = "logit",
                     fast: bool = True, batch_size: int = 8, preprocess: Preprocess | None = None,
                     input_kind: str = "auto") -> Iterator[SaliencyResult]:
    """``saliency`` one batch at a time: a SaliencyResult per ``batch_size`` inputs, as soon as it is computed.

    Example:
        >>> for part in saliency_batches("efficientnet_lite0", paths, batch_size=4):   # doctest: +SKIP
        ...     print(part.sources, part.predictions)

    Every input is read and checked when this is called, before the first gradient.
    """
    plan = _plan(model, images, target, score, batch_size, preprocess, input_kind)
    return _results(plan, score, fast, batch_size)
