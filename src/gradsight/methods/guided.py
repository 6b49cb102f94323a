"""Guided Backpropagation and the Deconvnet rule (Springenberg et al. 2014), on a modified copy of the model.

Example:
    >>> import gradsight                                                          # doctest: +SKIP
    >>> gradsight.attribute("efficientnet_lite0", method="guided_backprop").maps  # doctest: +SKIP

Both differentiate the class score through a copy of the model whose ReLU-family activations back-propagate
by the method's rule (never the user's model): guided backprop passes a gradient where the forward input was
positive (ReLU6: between 0 and 6) and the gradient itself is positive; deconvnet passes the positive part of
the gradient whatever the forward input. ReLUs applied as functions and smooth activations are refused by name.
The explained class is the model's own prediction (the copy's forward pass is the model's).
"""

from __future__ import annotations

from .job import AttributionJob
from .registry import MethodMaps, register_method, to_map


def _rule_gradient(job: AttributionJob, rule: str) -> MethodMaps:
    # The copy's forward pass is the model's, so its logits and predicted classes are the model's too.
    out = job.adapter.score_gradient(job.modified_model(rule), job.inputs, job.targets, job.score, job.fast)
    return MethodMaps(maps=to_map(out.gradient, "max_abs"), attribution=out.gradient, logits=out.logits,
                      targets=out.targets)


@register_method("guided_backprop", display="max_abs",
                 reference="Springenberg, Dosovitskiy, Brox, Riedmiller 2014, Striving for Simplicity "
                           "(arXiv:1412.6806)")
def guided_backprop(job: AttributionJob) -> MethodMaps:
    """The gradient through ReLUs that pass only positive gradients where their input was positive."""
    return _rule_gradient(job, "guided")


@register_method("deconvnet", display="max_abs",
                 reference="Zeiler & Fergus 2014 (ECCV), as formulated by Springenberg et al. 2014")
def deconvnet(job: AttributionJob) -> MethodMaps:
    """The gradient through ReLUs that pass the positive part of the gradient, whatever their input."""
    return _rule_gradient(job, "deconvnet")
