"""gradsight.saliency on Keras vs a plain tf.GradientTape loop and tf-keras-vis, side by side in one process.

Run:  .venv/bin/python bench/keras_saliency.py [--repeats 5]

Keras ResNet50 (random weights, ``weights=None``) on the bundled photo mirrored and shifted, batch 1 and 8 at
224 x 224, explained for fixed classes. The plain loop is what a user writes by hand: an eager GradientTape
over the pre-softmax logits. tf-keras-vis ``Saliency`` (with its ReplaceToLinear modifier, i.e. the logits)
runs when it is installed (``pip install tf-keras-vis``). Prints the median time per call, the ratios, and the
largest map difference relative to the largest map value. Then node gradients of the Keras seed CNN (each
unit on its input window) against a GradientTape on the partial model over the whole input.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import gradsight  # noqa: E402
from gradsight.adapters.keras.models import CAFFE  # noqa: E402
from gradsight.inputs import prepare_inputs  # noqa: E402


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_tape(model, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    features = keras.Model(model.inputs, model.get_layer("avg_pool").output)
    dense = model.get_layer("predictions")

    def run():
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            logits = tf.matmul(features(xt, training=False), dense.kernel) + dense.bias
            score = tf.reduce_sum(tf.gather(logits, targets, axis=1, batch_dims=1))
        return np.abs(tape.gradient(score, xt).numpy()).max(axis=-1)

    return run


def keras_vis(model, x: np.ndarray, targets: np.ndarray):
    try:
        from tf_keras_vis.saliency import Saliency
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
        from tf_keras_vis.utils.scores import CategoricalScore
    except ImportError:
        return None
    explainer = Saliency(model, model_modifier=ReplaceToLinear(), clone=True)
    return lambda: np.asarray(explainer(CategoricalScore(list(targets)), x, normalize_map=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None)
    loaded = gradsight.LoadedModel(model, gradsight.ModelSpec("keras:resnet50 (random weights)", "keras", CAFFE))
    photo = prepare_inputs(None, CAFFE).arrays[0]
    print(f"keras {keras.__version__}, tensorflow {tf.__version__}")
    print(f"{'batch':>5s} {'gradsight s':>11s} {'tape s':>8s} {'vs tape':>8s} {'tf-keras-vis s':>14s} "
          f"{'vs tkv':>7s} {'diff tape':>9s} {'diff tkv':>9s} {'1st call s':>10s}")
    for batch in (1, 8):
        x = np.ascontiguousarray(np.stack([np.roll(photo[:, ::-1] if i % 2 else photo, 8 * i, axis=1)
                                           for i in range(batch)]))
        targets = np.arange(batch, dtype=np.int32) * 97 % 1000
        wanted = targets.tolist()
        ours = lambda x=x, t=wanted: gradsight.saliency(loaded, x, target=t, batch_size=8).saliency  # noqa: E731
        first = _timed(ours)
        tape = plain_tape(model, x, targets)
        tkv = keras_vis(model, x, targets)
        runners = {"gradsight": ours, "tape": tape, **({"tkv": tkv} if tkv else {})}
        maps = {k: f() for k, f in runners.items()}
        times = {k: [] for k in runners}
        for _ in range(args.repeats):
            for k, f in runners.items():
                times[k].append(_timed(f))
        med = {k: statistics.median(v) for k, v in times.items()}
        top = np.abs(maps["tape"]).max()
        diff = {k: np.abs(maps["gradsight"] - maps[k]).max() / top for k in maps}
        if tkv:
            tkv_cols = f"{med['tkv']:14.3f} {med['tkv'] / med['gradsight']:6.2f}x"
            tkv_diff = f"{diff['tkv']:9.1e}"
        else:
            tkv_cols, tkv_diff = f"{'not installed':>14s} {'-':>7s}", f"{'-':>9s}"
        print(f"{batch:5d} {med['gradsight']:11.3f} {med['tape']:8.3f} {med['tape'] / med['gradsight']:7.2f}x "
              f"{tkv_cols} {diff['tape']:9.1e} {tkv_diff} {first:10.2f}", flush=True)


def node_gradients_on_windows(repeats: int) -> None:
    """Keras seed CNN, L6: gradsight (each unit on its input window) against a hand-written GradientTape on
    the partial model over the whole input, for one unit and for every unit of one channel."""
    from gradsight.adapters.keras.models import keras_seed_cnn

    model = keras_seed_cnn()
    partial = keras.Model(model.inputs, model.get_layer("L6").output)
    x = np.random.default_rng(0).random((128, 128, 1), dtype=np.float32)
    units = [(r, c, 0) for r in range(16) for c in range(16)]

    def tape(chosen):
        out = []
        for start in range(0, len(chosen), 32):
            chunk = np.array(chosen[start:start + 32])
            xt = tf.constant(np.repeat(x[None], len(chunk), axis=0))
            with tf.GradientTape() as g:
                g.watch(xt)
                z = partial(xt, training=False)
                total = tf.reduce_sum(tf.gather_nd(z, np.c_[np.arange(len(chunk)), chunk]))
            out.append(g.gradient(total, xt).numpy())
        return np.concatenate(out)

    print(f"{'node gradients, Keras seed CNN L6':36s} {'gradsight s':>11s} {'tape s':>8s} {'vs tape':>8s} "
          f"{'max diff':>9s}")
    for label, chosen in (("unit (8, 8, 0)", units[8 * 16 + 8:8 * 16 + 9]), ("all 256 units of channel 0", units)):
        ours = lambda chosen=chosen: gradsight.node_gradients(model, "L6", chosen, inputs=x).gradients  # noqa: E731
        theirs = lambda chosen=chosen: tape(chosen)  # noqa: E731
        a, b = ours(), theirs()
        assert np.abs(b).max() > 0, "dead units only: nothing to compare"
        times = {"ours": [], "tape": []}
        for _ in range(repeats):
            times["ours"].append(_timed(ours))
            times["tape"].append(_timed(theirs))
        med = {k: statistics.median(v) for k, v in times.items()}
        diff = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
        print(f"{label:36s} {med['ours']:11.4f} {med['tape']:8.4f} {med['tape'] / med['ours']:7.2f}x {diff:9.1e}",
              flush=True)


if __name__ == "__main__":
    main()
    node_gradients_on_windows(5)
