"""Reference inputs for Integrated Gradients and the deletion metric, all in model-input space.

Example:
    >>> base, described = baseline_inputs(job, "black", 5.0)      # doctest: +SKIP
    >>> described
    'black photo, preprocessed'

"zeros": the all-zero model input (for ImageNet normalisation, the mean colour); "black": a black photo run
through the model's own preprocessing; "blur": each input blurred by a Gaussian of ``sigma`` pixels; or an
array, (H, W, C) for every input or (N, H, W, C) one per input.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import BadInputError

NAMED = ("zeros", "black", "blur")


def blurred(inputs: np.ndarray, sigma: float) -> np.ndarray:
    """Each (H, W) plane of (N, H, W, C) blurred by a Gaussian of ``sigma`` pixels (edges reflected)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(inputs, sigma=(0, sigma, sigma, 0), mode="reflect").astype(np.float32)


def black_photo(preprocess, shape: tuple[int, ...]) -> np.ndarray:
    """A black photo through ``preprocess``, as one (H, W, C) array of ``shape``'s size."""
    if preprocess is None:
        raise BadInputError("baseline 'black'", expected="a model with a photo preprocessing",
                            got="model-input arrays without one", fix="use baseline='zeros' or pass an array")
    values = np.asarray(preprocess(Image.new("RGB", (shape[1], shape[0]))), dtype=np.float32)
    # A constant photo stays constant through resizing and cropping: one colour per channel.
    colour = values.reshape(-1, values.shape[-1])[0]
    return np.broadcast_to(colour, shape).astype(np.float32)


def baseline_inputs(job, baseline, sigma: float = 5.0) -> tuple[np.ndarray, str]:
    """(N, H, W, C) baselines for ``job.inputs`` and a description of what they are."""
    inputs = job.inputs
    if isinstance(baseline, str):
        if baseline == "zeros":
            return np.zeros_like(inputs), "zeros (model-input space)"
        if baseline == "black":
            return np.broadcast_to(black_photo(job.preprocess, inputs.shape[1:]), inputs.shape).copy(), \
                "black photo, preprocessed"
        if baseline == "blur":
            if not sigma > 0:
                raise BadInputError("blur_sigma", expected="a positive number of pixels", got=repr(sigma))
            return blurred(inputs, float(sigma)), f"Gaussian blur of the input, sigma {float(sigma):g} px"
        raise BadInputError("baseline", expected=f"one of {', '.join(NAMED)} or an array", got=repr(baseline))
    array = np.asarray(baseline, dtype=np.float32)
    if array.shape == inputs.shape[1:]:
        array = np.broadcast_to(array, inputs.shape)
    if array.shape != inputs.shape:
        raise BadInputError("baseline array", expected=f"shape {inputs.shape[1:]} or {inputs.shape}",
                            got=f"shape {array.shape}", fix="give one baseline in model-input layout (H, W, C)")
    if not np.isfinite(array).all():
        raise BadInputError("baseline array", expected="finite values", got="NaN or infinity")
    return array.copy(), "an array given by the user"
