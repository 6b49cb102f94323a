"""``gradsight.attribute``: any registered method on any model gradsight can load, one batch at a time.

Example:
    >>> import gradsight                                                                     # doctest: +SKIP
    >>> r = gradsight.attribute("efficientnet_lite0", method="integrated_gradients", n_steps=64)
    >>> r.method, r.options["rule"], r.maps.shape                                            # doctest: +SKIP
    ('integrated_gradients', 'gausslegendre', (1, 224, 224))
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..adapters.discovery import adapter_for
from ..errors import BadInputError
from ..inputs import prepare_inputs
from ..models.registry import as_loaded_model
from ..preprocess import Preprocess
from ..results import AttributionResult
from .job import SCORES, AttributionJob, target_list
from .registry import get_method, method_options


def _per_image(value, count: int) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 4 and len(value) == count


def _chunk_options(options: dict, start: int, stop: int, count: int) -> dict:
    """Options for images start..stop: a per-image array (count, H, W, C), such as a baseline, is sliced with
    them, also inside the options of a wrapped method (SmoothGrad's ``base_options``)."""
    chunk = {}
    for key, value in options.items():
        if _per_image(value, count):
            value = value[start:stop]
        elif isinstance(value, dict) and any(_per_image(v, count) for v in value.values()):
            value = {k: v[start:stop] if _per_image(v, count) else v for k, v in value.items()}
        chunk[key] = value
    return chunk


def _recorded(options: dict) -> dict:
    """Options as they are recorded in results and JSON: arrays are described, not copied (nested too)."""
    return {k: (f"array of shape {tuple(v.shape)}" if isinstance(v, np.ndarray)
                else _recorded(v) if isinstance(v, dict) else v) for k, v in options.items()}


def attribute(model: Any, images: Any = None, *, method: str = "gradient", target: Any = None,
              score: str = "logit", batch_size: int = 8, fast: bool = True, preprocess: Preprocess | None = None,
              progress: bool = False, input_kind: str = "auto", **options) -> AttributionResult:
    """Attribution maps of ``images`` (default: the bundled ouzel.png) by ``method`` (see ``list_methods``).

    ``model``: a name, a ``LoadedModel``, a ``torch.nn.Module`` or a ``keras.Model``. ``target``: None (the
    predicted class), an index, or one per image. ``score``: "logit" (pre-softmax), "prob" or "logprob".
    ``options``: the method's own (its defaults are the papers'); unknown ones are refused by name.
    Images go through the method ``batch_size`` at a time; methods bound their own inner batches.
    ``input_kind``: how arrays are read ("auto", "photo", "photo01", "model_input"; see ``prepare_inputs``).
    """
    info = get_method(method)
    chosen = method_options(info, options)
    if score not in SCORES:
        raise BadInputError("score", expected=f"one of {', '.join(SCORES)}", got=repr(score))
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise BadInputError("batch_size", expected="a whole number >= 1", got=repr(batch_size))
    loaded = as_loaded_model(model, preprocess=preprocess)
    adapter = adapter_for(loaded.module)
    info.require_framework(adapter.name)
    batch = prepare_inputs(images, loaded.preprocess, input_kind)
    count = len(batch.arrays)
    targets = target_list(target, count)
    if loaded.class_names is not None:
        for t in targets:
            if t is not None and not 0 <= t < len(loaded.class_names):
                raise BadInputError("target class", expected=f"an index in 0..{len(loaded.class_names) - 1}",
                                    got=str(t), fix="pass a class index the model has, or 'auto'")
    shared: dict = {}
    parts = []
    starts = range(0, count, batch_size)
    with adapter.unchanged_during(loaded.module):  # the batches run back to back: check the fast path once
        for start in tqdm(starts, desc=info.name, unit="batch", disable=not progress or len(starts) < 2):
            stop = min(start + batch_size, count)
            job = AttributionJob(adapter, loaded.module, batch.arrays[start:stop], tuple(targets[start:stop]),
                                 score, fast, loaded.preprocess, shared=shared)
            out = info.fn(job, **_chunk_options(chosen, start, stop, count))
            logits = out.logits if out.logits is not None else job.logits()
            chosen_targets = out.targets if out.targets is not None else job.resolved_targets()
            parts.append((out, logits, np.asarray(chosen_targets)))
    outs = [p[0] for p in parts]
    effective = {**_recorded(chosen), **outs[0].effective}
    for key in outs[0].effective:  # per-chunk values (one noise sigma per image) are joined
        if isinstance(outs[0].effective[key], list):
            effective[key] = [v for o in outs for v in o.effective[key]]
        elif isinstance(effective[key], dict) and isinstance(chosen.get(key), dict):
            # a wrapped method's options as the first chunk saw them, with the user's arrays described whole
            effective[key] = {**effective[key], **_recorded(chosen[key])}
    join = lambda name: None if getattr(outs[0], name) is None else np.concatenate(  # noqa: E731
        [getattr(o, name) for o in outs])
    return AttributionResult(
        maps=np.concatenate([o.maps for o in outs]).astype(np.float32),
        method=info.name,
        options=effective,
        targets=np.concatenate([p[2] for p in parts]),
        score=score,
        logits=np.concatenate([p[1] for p in parts]),
        model_name=loaded.name,
        framework=adapter.name,
        attribution=join("attribution"),
        layer_maps=join("layer_maps"),
        per_image={k: np.concatenate([o.per_image[k] for o in outs]) for k in outs[0].per_image},
        display=info.display,
        class_names=loaded.class_names,
        preprocess=loaded.preprocess,
        sources=batch.sources,
        geometries=batch.geometries,
        conversions=batch.conversions,
        fast=fast,
        photos=batch.photos,
        input_kinds=batch.kinds,
        orientations=batch.orientations,
    )
