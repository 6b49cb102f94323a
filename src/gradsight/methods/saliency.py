"""Vanilla-gradient saliency (Simonyan et al. 2013): max over colour channels of |d score / d input|.

Example:
    >>> import gradsight                                               # doctest: +SKIP
    >>> result = gradsight.saliency("efficientnet_lite0", "photo.jpg")  # doctest: +SKIP
    >>> result.saliency.shape, result.top_k(0, 1)[0][1]                # doctest: +SKIP
    ((1, 224, 224), 'water ouzel, dipper')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..adapters import adapter_for
from ..errors import BadInputError
from ..inputs import prepare_inputs
from ..models.spec import LoadedModel, ModelSpec, imagenet_preprocess
from ..preprocess import Preprocess
from ..results import SaliencyResult

SCORES = ("logit", "prob", "logprob")


def as_loaded_model(model: Any, preprocess: Preprocess | None = None) -> LoadedModel:
    """A LoadedModel from a name, a LoadedModel, or a bare framework model (ImageNet preprocessing by default)."""
    if isinstance(model, str):
        from ..models.registry import load_model

        model = load_model(model)
    if isinstance(model, LoadedModel):
        if preprocess is not None:
            model = LoadedModel(model.module, ModelSpec(model.name, model.spec.framework, preprocess,
                                                        model.class_names, model.spec.weights))
        return model
    adapter = adapter_for(model)  # raises a clear error for unsupported objects
    spec = ModelSpec(type(model).__name__, adapter.name, preprocess or imagenet_preprocess())
    return LoadedModel(model, spec)


def _targets(target, count: int) -> list[int | None]:
    if target is None or (isinstance(target, str) and target == "auto"):
        return [None] * count
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return [int(target)] * count
    if isinstance(target, Sequence) and not isinstance(target, str) and len(target) == count:
        return [None if t in (None, "auto") else int(t) for t in target]
    raise BadInputError("target", expected=f"'auto', a class index, or a list of {count} of them",
                        got=repr(target))


def saliency(model: Any, images: Any = None, *, target: Any = None, score: str = "logit", fast: bool = True,
             batch_size: int = 8, preprocess: Preprocess | None = None, progress: bool = False) -> SaliencyResult:
    """Saliency maps for ``images`` (default: the bundled ouzel.png) under ``model``.

    ``model``: a name (``"efficientnet_lite0"``), a ``LoadedModel`` or a ``torch.nn.Module``.
    ``target``: ``None``/``"auto"`` (the predicted class), a class index, or one per image.
    ``score``: ``"logit"`` (pre-softmax, the default: probabilities saturate), ``"prob"`` or ``"logprob"``.
    ``fast``: fold BatchNorm into convolutions for the gradient pass (checked against the plain model).
    Images are processed ``batch_size`` at a time to bound memory.
    """
    if score not in SCORES:
        raise BadInputError("score", expected=f"one of {', '.join(SCORES)}", got=repr(score))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise BadInputError("batch_size", expected="a whole number >= 1", got=repr(batch_size))
    loaded = as_loaded_model(model, preprocess)
    batch = prepare_inputs(images, loaded.preprocess)
    count = len(batch.arrays)
    targets = _targets(target, count)
    if loaded.class_names is not None:
        for t in targets:
            if t is not None and not 0 <= t < len(loaded.class_names):
                raise BadInputError("target class", expected=f"an index in 0..{len(loaded.class_names) - 1}",
                                    got=str(t), fix="pass a class index the model has, or 'auto'")
    adapter = adapter_for(loaded.module)
    logits, chosen, grads = [], [], []
    starts = range(0, count, batch_size)
    for start in tqdm(starts, desc="saliency", unit="batch", disable=not progress or len(starts) < 2):
        stop = start + batch_size
        out = adapter.class_score_gradient(loaded.module, batch.arrays[start:stop], targets[start:stop],
                                           score, fast)
        logits.append(out.logits)
        chosen.append(out.targets)
        grads.append(out.gradient)
    gradient = np.concatenate(grads)
    return SaliencyResult(
        saliency=np.abs(gradient).max(axis=-1),
        gradient=gradient,
        targets=np.concatenate(chosen),
        score=score,
        logits=np.concatenate(logits),
        model_name=loaded.name,
        class_names=loaded.class_names,
        preprocess=loaded.preprocess,
        sources=batch.sources,
        geometries=batch.geometries,
        conversions=batch.conversions,
        photos=batch.photos,
        fast=fast,
    )
