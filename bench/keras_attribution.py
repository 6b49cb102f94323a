"""gradsight's SmoothGrad and Grad-CAM on Keras vs tf-keras-vis, side by side in one process on the same inputs.

Run:  .venv/bin/python bench/keras_attribution.py [--repeats 3] [--batches 1 8]

Keras ResNet50 (random weights, ``weights=None``; no download) on the bundled photo mirrored and shifted, 224²,
fixed classes. SmoothGrad n=50 at noise level 0.15 of each input's range (both libraries define sigma that
way) against tf-keras-vis ``Saliency(smooth_samples=50)`` asked for the same quantity (the signed mean gradient
per channel: ``gradient_modifier=None, keepdims=True``; its default takes |gradient| of each sample before the
mean, which is not SmoothGrad as Smilkov et al. and PAIR define it); Grad-CAM at ``conv5_block3_out`` against
tf-keras-vis ``Gradcam`` (no upsampling, no normalisation: the raw layer map). Both explain the pre-softmax
score (tf-keras-vis with its ReplaceToLinear modifier). Medians of --repeats interleaved calls after one
warm-up call each (gradsight's first call compiles the pass with tf.function; tf-keras-vis runs eagerly).
Agreement: SmoothGrad on the same noise (ours handed to tf-keras-vis), Grad-CAM directly; the largest
difference over the largest value.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras_vis.saliency as tkv_saliency  # noqa: E402
from tf_keras_vis.gradcam import Gradcam  # noqa: E402
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear  # noqa: E402
from tf_keras_vis.utils.scores import CategoricalScore  # noqa: E402

import gradsight  # noqa: E402
from gradsight.adapters.keras.models import CAFFE  # noqa: E402
from gradsight.inputs import prepare_inputs  # noqa: E402

SAMPLES, LEVEL, LAYER = 50, 0.15, "conv5_block3_out"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(calls: dict, repeats: int) -> dict:
    for fn in calls.values():
        fn()  # warm-up (and tf.function tracing)
    times = {k: [] for k in calls}
    for _ in range(repeats):  # interleaved, so both see the same machine state
        for k, fn in calls.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def same_noise_smoothgrad(model, loaded, x, targets) -> float:
    """Largest difference of the two SmoothGrad maps when tf-keras-vis draws our noise (sample s: stream (0, s))."""
    real = tkv_saliency.np.random.normal

    def our_noise(loc, scale, size):
        draws = np.stack([np.random.default_rng([0, s]).standard_normal(size[2:], dtype=np.float32)
                          for s in range(size[0])])
        return loc + np.asarray(scale) * draws[:, None]

    tkv_saliency.np.random.normal = our_noise
    try:
        theirs = tkv_saliency.Saliency(model, model_modifier=ReplaceToLinear(), clone=True)(
            CategoricalScore(targets), x, smooth_samples=SAMPLES, smooth_noise=LEVEL, gradient_modifier=None,
            keepdims=True, normalize_map=False)
    finally:
        tkv_saliency.np.random.normal = real
    ours = gradsight.attribute(loaded, x, method="smoothgrad", target=targets, n_samples=SAMPLES,
                               noise_level=LEVEL, seed=0, input_kind="model_input", batch_size=len(x)).attribution
    return float(np.abs(ours - np.asarray(theirs)).max() / np.abs(theirs).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--methods", nargs="+", default=["smoothgrad", "grad_cam"], choices=["smoothgrad", "grad_cam"])
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None)
    loaded = gradsight.LoadedModel(model, gradsight.ModelSpec("keras:resnet50 (random weights)", "keras", CAFFE))
    photo = prepare_inputs(None, CAFFE).arrays[0]
    saliency = tkv_saliency.Saliency(model, model_modifier=ReplaceToLinear(), clone=True)
    gradcam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
    print(f"keras {keras.__version__}, tensorflow {tf.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'method':16s} {'batch':>5s} {'gradsight s':>11s} {'tf-keras-vis s':>14s} {'speed-up':>8s}  agreement")
    for batch in args.batches:
        x = np.ascontiguousarray(np.stack([np.roll(photo[:, ::-1] if i % 2 else photo, 8 * i, axis=1)
                                           for i in range(batch)]))
        targets = [int(t) for t in np.arange(batch) * 97 % 1000]

        def ours_sg(x=x, targets=targets):
            return gradsight.attribute(loaded, x, method="smoothgrad", target=targets, n_samples=SAMPLES,
                                       noise_level=LEVEL, input_kind="model_input", batch_size=len(x)).attribution

        def theirs_sg(x=x, targets=targets):
            return saliency(CategoricalScore(targets), x, smooth_samples=SAMPLES, smooth_noise=LEVEL,
                            gradient_modifier=None, keepdims=True, normalize_map=False)

        if "smoothgrad" in args.methods:
            med = compare({"ours": ours_sg, "theirs": theirs_sg}, args.repeats)
            agreement = same_noise_smoothgrad(model, loaded, x, targets)
            print(f"{'smoothgrad n=50':16s} {batch:5d} {med['ours']:11.3f} {med['theirs']:14.3f} "
                  f"{med['theirs'] / med['ours']:7.2f}x  max diff {agreement:.1e} of max (same noise)", flush=True)

        def ours_cam(x=x, targets=targets):
            return gradsight.attribute(loaded, x, method="grad_cam", target=targets, layer=LAYER,
                                       input_kind="model_input", batch_size=len(x)).layer_maps

        def theirs_cam(x=x, targets=targets):
            # seek_penultimate_conv_layer=False: by default tf-keras-vis replaces a named layer that is not a
            # convolution (conv5_block3_out is the block's ReLU) by the last convolution before it
            return gradcam(CategoricalScore(targets), x, penultimate_layer=LAYER, seek_penultimate_conv_layer=False,
                           expand_cam=False, normalize_cam=False)

        if "grad_cam" not in args.methods:
            continue
        # Grad-CAM of the predicted classes: for other classes of a random-weight model the ReLU'd map is often
        # all zero in both libraries, which would say nothing about agreement
        predicted = [int(t) for t in np.asarray(model(x, training=False)).argmax(axis=1)]
        med = compare({"ours": partial(ours_cam, x, predicted), "theirs": partial(theirs_cam, x, predicted)},
                      args.repeats)
        a, b = ours_cam(x, predicted), np.asarray(theirs_cam(x, predicted))
        print(f"{'grad_cam':16s} {batch:5d} {med['ours']:11.3f} {med['theirs']:14.3f} "
              f"{med['theirs'] / med['ours']:7.2f}x  max diff {np.abs(a - b).max() / np.abs(b).max():.1e} of max",
              flush=True)


if __name__ == "__main__":
    main()
