"""gradsight.saliency vs Captum's Saliency, side by side in one process on the same inputs.

Run:  .venv/bin/python bench/saliency.py [--repeats 7] [--models resnet50 efficientnet_lite0]
      .venv/bin/python bench/saliency.py --change-check     (what seeing model changes costs per call)

For each model and batch size it prints the median time per call of both and their ratio; the ratio for
gradsight's plain path (``fast=False``: no BatchNorm folding, channels-last input kept); how far apart the
maps are (relative L2 = |ours - captum| / |captum|, and the largest pixel difference over the largest pixel);
the float32 noise floor of the map itself (Captum's map vs a float64 run of the same model); and the share of
this machine's float32 GEMM throughput (the faster of torch.mm and a 1x1 convolution) that the gradient pass
reaches, FLOPs counted by torch.utils.flop_counter over forward + input-gradient backward.

ResNet50 has random weights (no download); its BatchNorm scales and statistics are drawn in ranges like a
trained network's, because with default initialisation a random ResNet50 is numerically chaotic (float32
and float64 maps then differ by ~1e-2 whatever the implementation, so agreement could not be judged).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import numpy as np
import torch
import torchvision
from captum.attr import Saliency
from torch.utils.flop_counter import FlopCounterMode

import gradsight
from gradsight.inputs import prepare_inputs


def gemm_gflops(repeats: int = 7) -> dict[str, float]:
    """Float32 GEMM throughput two ways: torch.mm (MKL) and a 1x1 convolution, which oneDNN runs as a GEMM."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x = torch.randn(8, 1024, 28, 28).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(1024, 1024, 1, bias=False).requires_grad_(False)
    rates = {}
    for name, fn, flops in [("torch.mm 2048^3", lambda: a @ b, 2 * 2048**3),
                            ("1x1 conv (oneDNN GEMM)", lambda: conv(x), 2 * 8 * 28 * 28 * 1024 * 1024)]:
        fn()
        rates[name] = flops / min(_timed(fn) for _ in range(repeats)) / 1e9
    return rates


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def conditioned_resnet50(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torchvision.models.resnet50().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1, generator=gen)
            module.running_var.uniform_(0.5, 1.5, generator=gen)
            module.bias.data.uniform_(-0.1, 0.1, generator=gen)
            module.weight.data.uniform_(0.5, 1.0, generator=gen)
            if name.endswith("bn3"):  # last BN of each residual branch: small, as in trained ResNets
                module.weight.data.mul_(0.2)
    return net


def inputs_for(model: gradsight.LoadedModel, batch: int) -> np.ndarray:
    """The bundled photo, mirrored and shifted: real image statistics, a different input per batch item."""
    photo = prepare_inputs(None, model.preprocess).arrays[0]
    variants = [np.roll(photo[:, ::-1] if i % 2 else photo, 8 * i, axis=1) for i in range(batch)]
    return np.ascontiguousarray(np.stack(variants))


def captum_saliency(explainer: Saliency, x_nchw: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    return explainer.attribute(x_nchw, target=targets, abs=True).amax(dim=1).detach().numpy()


def flops_of_pass(model: torch.nn.Module, x_nchw: torch.Tensor, targets: torch.Tensor) -> int:
    """Convolution and matmul FLOPs of forward + input-gradient backward (what the saliency pass runs)."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter:
        x = x_nchw.clone().requires_grad_()
        frozen(x).gather(1, targets[:, None]).sum().backward()
    return counter.get_total_flops()


def bench(model: gradsight.LoadedModel, batch: int, repeats: int, peak: float) -> dict:
    x = inputs_for(model, batch)
    x_nchw = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        targets = model.module(x_nchw).argmax(1)
    explainer = Saliency(model.module)
    fold_cost = _timed(lambda: gradsight.saliency(model, x[:1], target=targets[:1].tolist()))
    ours = gradsight.saliency(model, x, target=targets.tolist()).saliency
    theirs = captum_saliency(explainer, x_nchw, targets)
    reference64 = gradsight.saliency(copy.deepcopy(model.module).double(), x.astype(np.float64),
                                     target=targets.tolist(), fast=False).saliency
    times = {"gradsight": [], "plain": [], "captum": []}
    for _ in range(repeats):  # interleaved, so all see the same machine state
        times["gradsight"].append(_timed(lambda: gradsight.saliency(model, x, target=targets.tolist())))
        times["plain"].append(_timed(lambda: gradsight.saliency(model, x, target=targets.tolist(),
                                                                fast=False)))
        times["captum"].append(_timed(lambda: captum_saliency(explainer, x_nchw, targets)))
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = flops_of_pass(model.module, x_nchw, targets)
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731
    return {
        "model": model.name, "batch": batch, "gradsight_s": med["gradsight"], "captum_s": med["captum"],
        "speedup": med["captum"] / med["gradsight"], "plain_speedup": med["captum"] / med["plain"],
        "rel_l2": rel(ours, theirs),
        "max_pixel": float(np.abs(ours - theirs).max() / np.abs(theirs).max()),
        "noise_floor": rel(theirs, reference64), "gflops": flops / 1e9, "fold_s": fold_cost,
        "gemm_fraction": flops / med["gradsight"] / 1e9 / peak,
    }


def change_check(repeats: int) -> None:
    """What checking for changes costs per call: the fast path's folded copy is reused only while the model's
    structure (model_signature) and every tensor value (a bitwise comparison with a snapshot) are unchanged;
    node_gradient also keys its field report on the structure. Medians over ``repeats`` x 20 calls."""
    from gradsight.adapters.torch.folding import structure_key
    from gradsight.adapters.torch.zoo import seed_cnn

    resnet = gradsight.LoadedModel(conditioned_resnet50(), gradsight.ModelSpec(
        "resnet50 (random weights)", "torch", gradsight.Preprocess(resize=232, crop=224)))
    for model in (resnet, gradsight.load_model("efficientnet_lite0")):
        _check_cost(model, repeats)
    net = seed_cnn("same")
    x = np.random.default_rng(0).random((128, 128, 1), dtype=np.float32)
    gradsight.node_gradient(net, "L6", (8, 8, 0), x)
    key = _per_call(lambda: structure_key(net), repeats, 200)
    call = _per_call(lambda: gradsight.node_gradient(net, "L6", (8, 8, 0), x), repeats, 50)
    print(f"seed CNN (no BatchNorm: no folded copy, no values to compare): field-report key {key * 1e3:.3f} ms "
          f"per call; a node_gradient call of L6 (8, 8, 0) takes {call * 1e3:.2f} ms")


def _per_call(fn, repeats: int, n: int = 20) -> float:
    return statistics.median(_timed(lambda: [fn() for _ in range(n)]) / n for _ in range(repeats))


def _check_cost(model: gradsight.LoadedModel, repeats: int) -> None:
    from gradsight.adapters.torch.folding import _FOLDED, model_signature, same_values

    net = model.module
    x = inputs_for(model, 8)
    gradsight.saliency(model, x[:1])  # builds the folded copy
    structure, tensors, _ = model_signature(net)
    saved = _FOLDED[net][1]
    walk = _per_call(lambda: model_signature(net), repeats)
    values = _per_call(lambda: same_values(tensors, saved), repeats)
    one = statistics.median(_timed(lambda: gradsight.saliency(model, x[:1])) for _ in range(repeats))
    eight = statistics.median(_timed(lambda: gradsight.saliency(model, x)) for _ in range(repeats))
    count = sum(t.numel() for t in tensors)
    print(f"{model.name}: {len(structure)} modules, {count / 1e6:.1f} M values; structure walk "
          f"{walk * 1e3:.2f} ms + value comparison {values * 1e3:.2f} ms = {(walk + values) * 1e3:.2f} ms per "
          f"call; a saliency call takes {one * 1e3:.0f} ms (batch 1), {eight * 1e3:.0f} ms (batch 8)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_lite0"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--change-check", action="store_true", help="only measure what seeing changes costs")
    args = parser.parse_args()
    if args.change_check:
        change_check(args.repeats)
        return
    rates = gemm_gflops()
    peak = max(rates.values())
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          "float32 GEMM: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items())
          + f" (peak used: {peak:.0f})")
    models = {
        "resnet50": lambda: gradsight.LoadedModel(conditioned_resnet50(), gradsight.ModelSpec(
            "resnet50 (random weights)", "torch", gradsight.Preprocess(resize=232, crop=224))),
        "efficientnet_lite0": lambda: gradsight.load_model("efficientnet_lite0"),
    }
    header = (f"{'model':28s} {'batch':>5s} {'gradsight s':>11s} {'captum s':>9s} {'speed-up':>8s} "
              f"{'plain':>6s} {'rel L2':>8s} {'max px':>8s} {'f32 floor':>9s} {'GFLOP':>6s} {'of GEMM':>7s} "
              f"{'fold s':>6s}")
    print(header)
    for name in args.models:
        model = models[name]()
        for batch in args.batches:
            r = bench(model, batch, args.repeats, peak)
            print(f"{r['model']:28s} {r['batch']:5d} {r['gradsight_s']:11.3f} {r['captum_s']:9.3f} "
                  f"{r['speedup']:7.2f}x {r['plain_speedup']:5.2f}x {r['rel_l2']:8.1e} {r['max_pixel']:8.1e} "
                  f"{r['noise_floor']:9.1e} "
                  f"{r['gflops']:6.1f} {r['gemm_fraction']:7.1%} {r['fold_s']:6.2f}", flush=True)


if __name__ == "__main__":
    main()
