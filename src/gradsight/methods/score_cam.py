"""Score-CAM (Wang et al. 2020): each activation map, used as a mask on the input, weighted by the class
probability the model gives the masked input.

Example:
    >>> import gradsight                                                           # doctest: +SKIP
    >>> gradsight.attribute("efficientnet_lite0", method="score_cam").layer_maps  # doctest: +SKIP

For each channel k of the layer: M_k = the activation map upsampled bilinearly to the input and scaled to
[0, 1] (min to max); s_k = softmax over classes of the model's scores on x * M_k, at the target class (the
original's weights; pytorch-grad-cam uses a softmax over channels instead). Map = ReLU(sum_k s_k A_k), at the
layer's resolution and upsampled. No gradients are used; the masked copies go through the model
``internal_batch_size`` at a time.
"""

from __future__ import annotations

import numpy as np

from .cam import layer_of, upsample
from .job import AttributionJob, select_scores
from .occlusion import positive_int
from .registry import MethodMaps, register_method


@register_method("score_cam", kind="cam", display="cam",
                 reference="Wang et al. 2020, Score-CAM (CVPR Workshops)")
def score_cam(job: AttributionJob, *, layer: str | None = None, internal_batch_size: int = 64) -> MethodMaps:
    """Activation maps weighted by the class probability of the input masked by each of them."""
    internal_batch_size = positive_int("internal_batch_size", internal_batch_size)
    name = layer_of(job, layer)
    targets = job.resolved_targets()
    activations = job.adapter.layer_gradient(job.model, name, job.inputs, targets.tolist(), job.score).activations
    size = job.inputs.shape[1:3]
    layer_maps, maps = [], []
    for i in range(len(job)):
        a = activations[i].transpose(2, 0, 1)  # (c, h, w)
        masks = upsample(a, size)
        low = masks.min(axis=(1, 2), keepdims=True)
        span = masks.max(axis=(1, 2), keepdims=True) - low
        masks = np.divide(masks - low, span, out=np.zeros_like(masks), where=span > 0)
        weights = np.zeros(len(a))
        for start in range(0, len(a), internal_batch_size):
            chunk = masks[start:start + internal_batch_size, :, :, None]
            logits = job.adapter.predict(job.model, job.inputs[i][None] * chunk, internal_batch_size, fast=job.fast)
            weights[start:start + len(chunk)] = select_scores(logits, np.full(len(chunk), targets[i]), "prob")
        combined = np.einsum("k,k...->...", weights, a.astype(np.float64))  # no BLAS: see job.add_rows
        layer_maps.append(np.maximum(combined, 0))
        maps.append(np.maximum(upsample(combined[None], size)[0], 0))
    return MethodMaps(maps=np.stack(maps).astype(np.float32), layer_maps=np.stack(layer_maps).astype(np.float32),
                      logits=job.logits(), targets=targets, effective={"layer": name})
