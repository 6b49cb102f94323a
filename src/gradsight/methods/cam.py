"""Class activation maps from a layer's gradients: Grad-CAM, Grad-CAM++ and LayerCAM.

Example:
    >>> import gradsight                                                               # doctest: +SKIP
    >>> r = gradsight.attribute("efficientnet_lite0", method="grad_cam")              # the last spatial layer
    >>> r.layer_maps.shape, r.maps.shape, r.options["layer"]                          # doctest: +SKIP
    ((1, 7, 7), (1, 224, 224), 'act2')

With A the layer's activations (h, w, c) and G = d score / d A (the pre-softmax score by default):
- Grad-CAM (Selvaraju et al. 2017): weights a_c = mean over positions of G_c; map = ReLU(sum_c a_c A_c).
- Grad-CAM++ (Chattopadhyay et al. 2018), the paper's closed form with sums of activations:
  alpha = G^2 / (2 G^2 + sum_ab(A) G^3) (0 where the denominator is 0); w_c = sum_ab alpha ReLU(G);
  map = ReLU(sum_c w_c A_c).
- LayerCAM (Jiang et al. 2021): map = ReLU(sum_c ReLU(G_c) A_c), position by position.
The layer map is upsampled bilinearly (half-pixel centres) to the model input; ``on_original`` maps it onto
the photo. The default layer is the last spatial layer found by the receptive-field trace.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import BadInputError
from .job import AttributionJob
from .registry import MethodMaps, register_method


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) maps resized bilinearly to (N, rows, cols), pixel centres aligned (align_corners=False)."""
    rows, cols = size
    return np.stack([np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize(
        (cols, rows), Image.Resampling.BILINEAR)) for m in maps]).astype(np.float32)


def last_spatial_layer(job: AttributionJob) -> str:
    """The last layer (in execution order) whose output is still a spatial map with more than one unit."""
    from ..receptive.analytic import receptive_field

    shape = job.inputs.shape
    report = receptive_field(job.model, (shape[1], shape[2]))
    best = None
    for order, layer in enumerate(report.layers):
        grid = layer.spatial_shape
        if layer.is_global or not grid or max(grid) < 2 or len(layer.output_shape) != 3:
            continue
        key = (layer.seq if layer.seq >= 0 else order, -layer.name.count("."), -len(layer.name))
        if best is None or key > best[0]:
            best = (key, layer.name)
    if best is None:
        raise BadInputError("CAM layer", expected="a model with a spatial layer (a feature map with more than "
                            "one position)", got="none in the receptive-field trace", fix="pass layer=NAME")
    return best[1]


def layer_of(job: AttributionJob, layer) -> str:
    """The CAM layer's name: ``layer`` resolved, or the last spatial layer; found once per call."""
    key = ("cam_layer", layer)
    if key not in job.shared:
        job.shared[key] = last_spatial_layer(job) if layer is None else job.adapter.resolve_layer(job.model,
                                                                                                 layer)[0]
    return job.shared[key]


def _cam(job: AttributionJob, layer, weigh) -> MethodMaps:
    name = layer_of(job, layer)
    out = job.adapter.layer_gradient(job.model, name, job.inputs, job.targets, job.score, job.fast)
    if out.activations.shape[1:3] == (1, 1):  # a pooled layer: its "map" would be one constant value
        raise BadInputError(f"CAM layer {name!r}", expected="a spatial feature map with more than one position",
                            got=f"a map of 1 x 1 positions ({out.activations.shape[-1]} channels)",
                            fix="pick a layer before the global pooling, or leave layer= unset")
    a = out.activations.astype(np.float64)
    g = out.gradient.astype(np.float64)
    layer_maps = np.maximum(weigh(a, g), 0.0).astype(np.float32)
    return MethodMaps(maps=upsample(layer_maps, job.inputs.shape[1:3]), layer_maps=layer_maps,
                      logits=out.logits, targets=out.targets, effective={"layer": name})


def _grad_cam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    weights = g.mean(axis=(1, 2))  # (N, c)
    return np.einsum("nhwc,nc->nhw", a, weights)


def _grad_cam_pp(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    g2, g3 = g ** 2, g ** 3
    denominator = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3
    alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=denominator != 0)
    weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    return np.einsum("nhwc,nc->nhw", a, weights)


def _layer_cam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    return (np.maximum(g, 0) * a).sum(axis=-1)


@register_method("grad_cam", kind="cam", display="cam",
                 reference="Selvaraju et al. 2017, Grad-CAM (ICCV)")
def grad_cam(job: AttributionJob, *, layer: str | None = None) -> MethodMaps:
    """ReLU of the activations weighted by their position-averaged gradients."""
    return _cam(job, layer, _grad_cam)


@register_method("grad_cam_pp", kind="cam", display="cam",
                 reference="Chattopadhyay, Sarkar, Howlader, Balasubramanian 2018, Grad-CAM++ (WACV)")
def grad_cam_pp(job: AttributionJob, *, layer: str | None = None) -> MethodMaps:
    """Grad-CAM with weights from higher-order terms of the gradient (the paper's sum form)."""
    return _cam(job, layer, _grad_cam_pp)


@register_method("layer_cam", kind="cam", display="cam",
                 reference="Jiang, Zhang, Hou, Cheng, Wei 2021, LayerCAM (IEEE TIP)")
def layer_cam(job: AttributionJob, *, layer: str | None = None) -> MethodMaps:
    """ReLU of the activations weighted position by position by their positive gradients."""
    return _cam(job, layer, _layer_cam)
