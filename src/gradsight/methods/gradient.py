"""The vanilla gradient (Simonyan et al. 2013) and Input x Gradient (Shrikumar et al. 2016).

Example:
    >>> import gradsight                                                        # doctest: +SKIP
    >>> gradsight.attribute("efficientnet_lite0", method="gradient").maps.shape  # doctest: +SKIP
    (1, 224, 224)

``gradient``: d score / d input; the map is max over channels of |gradient|, as the saliency of the paper.
``input_x_gradient``: input (model-input space) times the gradient, signed; the map sums the channels.
"""

from __future__ import annotations

from .job import AttributionJob
from .registry import MethodMaps, register_method, to_map


@register_method("gradient", display="max_abs",
                 reference="Simonyan, Vedaldi, Zisserman 2013, Deep Inside Convolutional Networks (arXiv:1312.6034)")
def gradient(job: AttributionJob) -> MethodMaps:
    """The gradient of the class score with respect to the input; map = max over channels of |gradient|."""
    out = job.adapter.score_gradient(job.model, job.inputs, job.targets, job.score, job.fast)
    return MethodMaps(maps=to_map(out.gradient, "max_abs"), attribution=out.gradient, logits=out.logits,
                      targets=out.targets)


@register_method("input_x_gradient", display="sum",
                 reference="Shrikumar et al. 2016, Not Just a Black Box (arXiv:1605.01713)")
def input_x_gradient(job: AttributionJob) -> MethodMaps:
    """Input times gradient, signed, in model-input space; map = sum over channels."""
    out = job.adapter.score_gradient(job.model, job.inputs, job.targets, job.score, job.fast)
    attribution = job.inputs * out.gradient
    return MethodMaps(maps=to_map(attribution, "sum"), attribution=attribution, logits=out.logits,
                      targets=out.targets)
