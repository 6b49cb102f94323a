"""Can a map be trusted? The cost of deletion / insertion curves and of a cascading sanity check.

Run:  .venv/bin/python bench/evaluation.py [--steps 200] [--repeats 3] [--threads N] [--no-quantus] [--no-sanity]

1. Deletion and insertion curves of one 224 x 224 image (the bundled photo) on the embedded EfficientNet-Lite0,
   ``steps`` steps (steps + 1 forward passes per curve), the pixel order of the gradient map:
   - gradsight: ``evaluation.faithfulness.curve``, the forward passes batched (``--batches``), on the fast path
     (BatchNorm folded, inference mode; the default) and, at batch 8, without it (``fast=False``);
   - a straightforward loop: the same perturbed images, one forward pass each (torch, eval, no_grad);
   - Quantus 0.6 ``PixelFlipping`` (deletion only, where comparable): it perturbs *elements* (channel x pixel),
     and ``features_in_step`` must divide 224 * 224, so 784 elements per step = 192 forward passes per curve.
   The loop and gradsight compute the same curves (the largest difference is printed); times are medians of
   wall-clock and of this process's CPU time (the CPU time is the fairer figure on a loaded machine with one
   thread; with several threads, waiting threads spin and inflate it). The load average is printed first.
   Also the whole ``gradsight.faithfulness`` call (map + curve + random-order curve) per metric.
2. A sanity check of one method (gradient) on torchvision ResNet50 with random weights, cascading through every
   parameter block (fc, each bottleneck, bn1, conv1): total time, and what a step costs (copy + re-initialise,
   the gradient pass). Whether reusing the forward pass of the unchanged lower layers would pay is estimated from
   the share of a gradient pass that the forward pass through those layers takes (the backward pass must run
   through every layer anyway: the randomised top changes the gradient that reaches the bottom).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import platform
import statistics
import time
from functools import partial

import numpy as np
import torch
import torchvision

import gradsight
from gradsight.adapters.discovery import adapter_for
from gradsight.evaluation.faithfulness import _rise_blur, curve, faithfulness, step_sizes
from gradsight.evaluation.sanity import sanity_check
from gradsight.inputs import prepare_inputs


def _median_time(fn, repeats: int) -> tuple[float, object]:
    wall, _, out = _median_times(fn, repeats)
    return wall, out


def _median_times(fn, repeats: int) -> tuple[float, float, object]:
    """(median wall-clock seconds, median CPU seconds of this process, the last result)."""
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), out


def loop_curve(net: torch.nn.Module, start: np.ndarray, end: np.ndarray, order: np.ndarray, counts: np.ndarray,
               target: int) -> np.ndarray:
    """The straightforward way: one perturbed image, one forward pass, one probability at a time."""
    rows, cols = start.shape[:2]
    x0 = torch.from_numpy(start.transpose(2, 0, 1).copy())[None]
    x1 = torch.from_numpy(end.transpose(2, 0, 1).copy())[None]
    r, c = np.unravel_index(order, (rows, cols))
    r, c = torch.from_numpy(r), torch.from_numpy(c)
    scores = []
    with torch.no_grad():
        for count in counts:
            x = x0.clone()
            x[0, :, r[:count], c[:count]] = x1[0, :, r[:count], c[:count]]
            scores.append(float(torch.softmax(net(x).double(), dim=1)[0, target]))
    return np.array(scores)


def bench_curves(steps: int, repeats: int, batches: list[int], with_quantus: bool) -> list[tuple]:
    model = gradsight.load_model("efficientnet_lite0")
    net = model.module.eval()
    adapter = adapter_for(net)
    x = prepare_inputs(None, model.preprocess).arrays
    explained = gradsight.attribute(model, None, method="gradient")
    target = int(explained.targets[0])
    order = np.argsort(-explained.maps[0].ravel(), kind="stable")
    rows, cols = x.shape[1:3]
    counts = step_sizes(rows * cols, steps)
    rows_out = []
    for metric in ("deletion", "insertion"):
        start, end = (x[0], np.zeros_like(x[0])) if metric == "deletion" else (_rise_blur(x[0]), x[0])
        t_loop, c_loop, reference = _median_times(partial(loop_curve, net, start, end, order, counts, target),
                                                  repeats)
        rows_out.append((metric, "loop of single forward passes", 1, len(counts), t_loop, c_loop, 1.0, 1.0, 0.0))
        runs = [(batch, True) for batch in batches] + [(8, False)]
        for batch, fast in runs:
            t, c, values = _median_times(partial(curve, adapter, net, start, end, order, counts, target, "prob",
                                                 batch, fast), repeats)
            how = "gradsight curve (batched, fast path)" if fast else "gradsight curve (batched, fast=False)"
            rows_out.append((metric, how, batch, len(counts), t, c, t_loop / t, c_loop / c,
                             float(np.abs(values - reference).max())))
        if metric == "deletion" and with_quantus:
            rows_out.append(_quantus_row(net, x, explained.maps[0], target, repeats, t_loop, len(counts)))
        t_call, c_call, _ = _median_times(
            lambda m=metric: faithfulness(model, None, method="gradient", metric=m, steps=steps), repeats)
        default_batch = inspect.signature(faithfulness).parameters["batch_size"].default
        rows_out.append((metric, "gradsight.faithfulness (map + curve + random curve)", default_batch, 2 * len(counts),
                         t_call, c_call, float("nan"), float("nan"), float("nan")))
    return rows_out


def _quantus_row(net, x, saliency, target, repeats, t_loop, loop_passes) -> tuple:
    import warnings

    import quantus

    metric = quantus.PixelFlipping(features_in_step=784, perturb_baseline=0.0, normalise=False, abs=False,
                                   disable_warnings=True)
    x_nchw = x.transpose(0, 3, 1, 2).copy()
    a_batch = saliency[None, None].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t, out = _median_time(lambda: metric(model=net, x_batch=x_nchw, y_batch=np.array([target]), a_batch=a_batch,
                                             channel_first=True, softmax=True, device="cpu"), repeats)
    passes = len(out[0])
    # per forward pass, Quantus against the loop: the fair comparison when the step counts differ
    return ("deletion", "quantus.PixelFlipping (784 elements/step)", 1, passes, t, float("nan"),
            (t_loop / loop_passes) / (t / passes), float("nan"), float("nan"))


def bench_sanity(repeats: int) -> dict:
    torch.manual_seed(0)
    net = torchvision.models.resnet50().eval()
    x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    adapter = adapter_for(net)
    blocks = adapter.parameter_blocks(net)
    t_total, report = _median_time(lambda: sanity_check(net, x, methods=["gradient"], seed=0), 1)
    t_copy, _ = _median_time(lambda: adapter.modified_copy(net, "reinit", layers=list(blocks), seed=0), repeats)
    t_deepcopy, _ = _median_time(lambda: copy.deepcopy(net), repeats)
    t_grad, _ = _median_time(lambda: gradsight.attribute(net, x, method="gradient", target=0), repeats)
    t_forward, _ = _median_time(lambda: adapter.predict(net, x), repeats)
    return {"blocks": blocks, "total": t_total, "copy": t_copy, "deepcopy": t_deepcopy, "gradient": t_grad,
            "forward": t_forward, "final": report.final_similarity("gradient")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--no-quantus", action="store_true")
    parser.add_argument("--no-sanity", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {platform.processor() or '?'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats}; load average "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"\n1. one curve of one 224 x 224 image, EfficientNet-Lite0, {args.steps} steps\n")
    print(f"{'metric':10s} {'how':52s} {'batch':>5s} {'passes':>6s} {'wall s':>7s} {'cpu s':>7s} {'speed-up':>8s} "
          f"{'(cpu)':>6s} {'max |diff|':>10s}")
    rows = bench_curves(args.steps, args.repeats, args.batches, not args.no_quantus)
    for metric, how, batch, passes, t, c, ratio, ratio_cpu, diff in rows:
        print(f"{metric:10s} {how:52s} {batch:5d} {passes:6d} {t:7.2f} {c:7.2f} {ratio:8.2f} {ratio_cpu:6.2f} "
              f"{diff:10.1e}")
    # The figure: deletion + insertion of the image together, against the loop doing both.
    totals: dict[tuple[str, int], list[float]] = {}
    for _metric, how, batch, _, t, c, *_ in rows:
        if how.startswith(("loop", "gradsight curve")):
            entry = totals.setdefault((how, batch), [0.0, 0.0, 0])
            entry[0], entry[1], entry[2] = entry[0] + t, entry[1] + c, entry[2] + 1
    loop = totals.get(("loop of single forward passes", 1))
    if loop is not None and loop[2] == 2:
        for (how, batch), (t, c, n) in totals.items():
            if n == 2 and how.startswith("gradsight"):
                print(f"deletion + insertion, {how}, batch {batch}: {t:.2f} s wall, {c:.2f} s cpu -> "
                      f"{loop[0] / t:.2f}x (wall), {loop[1] / c:.2f}x (cpu) the loop's {loop[0]:.2f} s")
    print("speed-up: against the loop (wall, and CPU time), same curve; for Quantus per forward pass (its step "
          "count differs)")
    print("load average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    if args.no_sanity:
        return
    s = bench_sanity(args.repeats)
    n = len(s["blocks"])
    print(f"\n2. sanity check, gradient, ResNet50 (random weights), cascade through {n} blocks "
          f"({s['blocks'][0]} ... {s['blocks'][-1]})\n")
    print(f"total {s['total']:.1f} s = {s['total'] / (n + 2):.2f} s per map ({n} randomised + original + random "
          f"logit); final Spearman |map| {s['final']:+.3f}")
    print(f"per step: copy + re-initialise every block {s['copy']:.2f} s (deepcopy alone {s['deepcopy']:.2f} s), "
          f"gradient map {s['gradient']:.2f} s, of which a forward pass {s['forward']:.2f} s")
    # Reusing the unchanged lower layers' forward pass saves at most the forward through them; on average over
    # the cascade half of the network is unchanged, so at most forward / 2 per step.
    saving = s["forward"] / 2 / (s["gradient"] + s["copy"])
    print(f"reusing the forward pass of the unchanged lower layers would save at most ~{saving:.0%} of a step "
          "(forward/2 of copy + gradient): the backward pass runs through every layer anyway")


if __name__ == "__main__":
    main()
