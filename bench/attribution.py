"""gradsight's attribution methods vs Captum and pytorch-grad-cam, side by side in one process on the same inputs.

Run:  .venv/bin/python bench/attribution.py [--repeats 3] [--parts time memory] [--models resnet50 efficientnet_lite0]

time: SmoothGrad (n=50) and Integrated Gradients (n=50) against Captum's NoiseTunnel(Saliency) and
IntegratedGradients at the best of a few internal batch sizes (each tried once after warm-up, the fastest
kept); Grad-CAM against pytorch-grad-cam's GradCAM; occlusion (32 px windows, stride 16) against Captum's
Occlusion at its default perturbations_per_eval=1, and against gradsight's own occlusion with every occluded
copy run through the whole network (what the incremental runner saves). Medians of --repeats interleaved
calls; agreement next to each ratio: relative L2 of the raw attributions (SmoothGrad: on the same noise,
handed to Captum), for Grad-CAM the largest difference of pytorch-grad-cam's [0, 1]-scaled output and ours
scaled the same way.

memory: peak resident memory of one call, each configuration in a fresh subprocess: the process's peak is
reset (/proc/self/clear_refs) after the model and inputs are ready, and the peak above the resident size at
that point is reported (tracemalloc does not see torch's allocator). Shown for n_steps / n_samples =
50, 200, 800 at a fixed internal batch size, and for Captum's default internal_batch_size=None at 50.

ResNet50 has random weights with trained-like BatchNorm statistics (as bench/saliency.py, which see).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from saliency import conditioned_resnet50, inputs_for

import gradsight
from gradsight.adapters.torch import incremental
from gradsight.methods.attribute import attribute


def load(name: str) -> gradsight.LoadedModel:
    if name == "resnet50":
        return gradsight.LoadedModel(conditioned_resnet50(), gradsight.ModelSpec(
            "resnet50 (random weights)", "torch", gradsight.Preprocess(resize=232, crop=224)))
    return gradsight.load_model(name)


def cam_layer(model: gradsight.LoadedModel) -> str:
    return "layer4" if "resnet50" in model.name else "bn2"


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sigma_of(x: np.ndarray, level: float = 0.15) -> float:
    """One absolute sigma for Captum (one float per input tensor): our relative sigma of the first image."""
    return float(level * (x[0].max() - x[0].min()))


# --- the calls being compared ----------------------------------------------------------------------------

def ours_call(method: str, model, x, targets, **options):
    return lambda: attribute(model, x, method=method, target=targets, batch_size=len(x), **options)


def captum_smoothgrad(module, x, targets, sigma, batch):
    nt = NoiseTunnel(Saliency(module))
    return lambda: nt.attribute(nchw(x), nt_type="smoothgrad", nt_samples=50, stdevs=sigma, abs=False,
                                target=torch.tensor(targets), nt_samples_batch_size=batch)


def captum_ig(module, x, targets, batch, n_steps=50):
    ig = IntegratedGradients(module)
    return lambda: ig.attribute(nchw(x), baselines=0.0, target=torch.tensor(targets), n_steps=n_steps,
                                method="gausslegendre", internal_batch_size=batch)


def best_of(candidates: dict, make) -> tuple[object, float]:
    """The fastest of a few internal batch sizes, each timed once after one warm-up call of the first."""
    make(next(iter(candidates)))()
    times = {key: timed(make(key)) for key in candidates}
    key = min(times, key=times.get)
    return key, times[key]


def same_noise_agreement(model, x, targets, sigma) -> float:
    """SmoothGrad on the same noise (ours handed to Captum through torch.normal): relative L2."""
    ours = attribute(model, x, method="smoothgrad", target=targets, stdev=sigma, n_samples=50).attribution
    per = 50 if len(x) == 1 else 5  # samples per input in one Captum batch
    partitions = iter(range(0, 50, per))

    def our_noise(mean, std, *args, **kwargs):  # Captum's rows: input 0's samples of this partition, input 1's...
        first = next(partitions)
        return nchw(np.stack([sigma * np.random.default_rng([0, s]).standard_normal(x.shape[1:], dtype=np.float32)
                              for _ in range(len(x)) for s in range(first, first + per)]))

    real = torch.normal
    torch.normal = our_noise
    try:
        theirs = captum_smoothgrad(model.module, x, targets, sigma, per)()
    finally:
        torch.normal = real
    return rel_l2(ours, nhwc(theirs))


def compare(ours, theirs, repeats) -> tuple[float, float]:
    ours()
    theirs()
    times = {"ours": [], "theirs": []}
    for _ in range(repeats):  # interleaved, so both see the same machine state
        times["ours"].append(timed(ours))
        times["theirs"].append(timed(theirs))
    return statistics.median(times["ours"]), statistics.median(times["theirs"])


def time_part(models: list[str], batches: list[int], repeats: int, methods: list[str]) -> None:
    print(f"{'method':20s} {'model':28s} {'batch':>5s} {'gradsight s':>11s} {'reference s':>11s} "
          f"{'speed-up':>8s}  {'reference (config)':38s} agreement")
    for name in models:
        model = load(name)
        for batch in batches:
            bench_case(model, batch, repeats, methods)


def bench_case(model: gradsight.LoadedModel, batch: int, repeats: int, methods: list[str]) -> None:
    def row(method, t_ours, t_ref, ref, agreement):
        print(f"{method:20s} {model.name:28s} {batch:5d} {t_ours:11.3f} {t_ref:11.3f} {t_ref / t_ours:7.2f}x  "
              f"{ref:38s} {agreement}", flush=True)

    x = inputs_for(model, batch)
    with torch.no_grad():
        targets = model.module(nchw(x)).argmax(1).tolist()
    sigma = sigma_of(x)
    if "smoothgrad" in methods:
        smoothgrad_case(model, x, targets, sigma, repeats, row)
    if "integrated_gradients" in methods:
        ig_case(model, x, targets, repeats, row)
    if "grad_cam" in methods:
        grad_cam_case(model, x, targets, repeats, row)
    if "occlusion" in methods and batch == 1:
        occlusion_case(model, x, targets, repeats, row)


def smoothgrad_case(model, x, targets, sigma, repeats, row) -> None:
    batch = len(x)
    # SmoothGrad: Captum's nt_samples_batch_size counts samples per input (rows = inputs x that).
    sizes = [8, 16, 25, 50] if batch == 1 else [2, 4, 8]
    size, _ = best_of(dict.fromkeys(sizes), lambda b: captum_smoothgrad(model.module, x, targets, sigma, b))
    ours = ours_call("smoothgrad", model, x, targets, n_samples=50, stdev=sigma)
    t_ours, t_ref = compare(ours, captum_smoothgrad(model.module, x, targets, sigma, size), repeats)
    row("smoothgrad n=50", t_ours, t_ref, f"NoiseTunnel, nt_samples_batch_size={size}",
        f"rel L2 {same_noise_agreement(model, x, targets, sigma):.1e} (same noise)")


def ig_case(model, x, targets, repeats, row) -> None:
    batch = len(x)
    # Integrated Gradients: Captum's internal_batch_size counts (input, step) rows.
    sizes = [16, 25, 50] if batch == 1 else [32, 64, 100]
    size, _ = best_of(dict.fromkeys(sizes), lambda b: captum_ig(model.module, x, targets, b))
    ours = ours_call("integrated_gradients", model, x, targets, n_steps=50)
    t_ours, t_ref = compare(ours, captum_ig(model.module, x, targets, size), repeats)
    agreement = rel_l2(ours().attribution, nhwc(captum_ig(model.module, x, targets, size)()))
    row("integrated_gradients", t_ours, t_ref, f"IntegratedGradients, ibs={size}", f"rel L2 {agreement:.1e}")


def grad_cam_case(model, x, targets, repeats, row) -> None:
    layer = cam_layer(model)
    cam = GradCAM(model=model.module, target_layers=[model.module.get_submodule(layer)])
    cam_targets = [ClassifierOutputTarget(t) for t in targets]

    def reference():
        return cam(input_tensor=nchw(x), targets=cam_targets)

    ours = ours_call("grad_cam", model, x, targets, layer=layer)
    t_ours, t_ref = compare(ours, reference, repeats)
    ours_scaled = scaled_like_pytorch_grad_cam(ours().layer_maps, x.shape[1:3])
    row("grad_cam", t_ours, t_ref, f"pytorch-grad-cam GradCAM ({layer})",
        f"max diff {np.abs(ours_scaled - reference()).max():.1e} of [0, 1]")
    cam.activations_and_grads.release()
    for p in model.module.parameters():  # pytorch-grad-cam's backward filled them
        p.grad = None


def occlusion_case(model, x, targets, repeats, row) -> None:
    """Captum's default perturbations_per_eval=1: one forward pass per window (169 for one image)."""
    occ = Occlusion(model.module)

    def occlusion_reference():
        return occ.attribute(nchw(x), sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16), baselines=0,
                             target=torch.tensor(targets))

    ours = ours_call("occlusion", model, x, targets, window=32, stride=16)
    t_ours, t_ref = compare(ours, occlusion_reference, max(1, repeats // 2))
    row("occlusion 32/16", t_ours, t_ref, "Occlusion, perturbations_per_eval=1",
        f"rel L2 {rel_l2(ours().maps, occlusion_reference()[:, 0].numpy()):.1e}")

    def whole_passes():  # each occluded copy run through the whole network (what the incremental runner saves)
        incremental.MAX_CHANGED = 0.0
        try:
            return ours()
        finally:
            incremental.MAX_CHANGED = changed_share
    changed_share = incremental.MAX_CHANGED
    t_ours, t_whole = compare(ours, whole_passes, max(1, repeats // 2))
    row("occlusion 32/16", t_ours, t_whole, "gradsight, whole passes (not incremental)",
        f"rel L2 {rel_l2(ours().maps, whole_passes().maps):.1e}")


def scaled_like_pytorch_grad_cam(layer_maps: np.ndarray, size) -> np.ndarray:
    from gradsight.methods.cam import upsample

    def scale(m):
        low = m.min(axis=(1, 2), keepdims=True)
        return (m - low) / (1e-7 + (m - low).max(axis=(1, 2), keepdims=True))

    return scale(upsample(scale(layer_maps), size))


# --- memory: one configuration per fresh process -----------------------------------------------------------

def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def probe(config: dict) -> None:
    """Run one call of one configuration and print its peak resident memory above the starting point (MiB)."""
    torch.set_num_threads(int(config.get("threads", torch.get_num_threads())))
    model = load(config["model"])
    x = inputs_for(model, config["batch"])
    targets = [20] * len(x) if "efficientnet" in config["model"] else [1] * len(x)
    n, impl, what, size = config["n"], config["impl"], config["what"], config["ibs"]
    if impl == "ours":
        option = {"ig": dict(method="integrated_gradients", n_steps=n),
                  "smoothgrad": dict(method="smoothgrad", n_samples=n, stdev=0.3)}[what]
        call = lambda: attribute(model, x, target=targets, internal_batch_size=size, **option)  # noqa: E731
    elif what == "ig":
        ig = IntegratedGradients(model.module)
        call = lambda: ig.attribute(nchw(x), baselines=0.0, target=torch.tensor(targets), n_steps=n,  # noqa: E731
                                    method="gausslegendre", internal_batch_size=size)
    else:
        nt = NoiseTunnel(Saliency(model.module))
        call = lambda: nt.attribute(nchw(x), nt_type="smoothgrad", nt_samples=n, stdevs=0.3,  # noqa: E731
                                    abs=False, target=torch.tensor(targets), nt_samples_batch_size=size)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM, the peak resident set size, to the current size
    start = _rss_kb("VmRSS")
    t = timed(call)
    print(json.dumps({"peak_mib": (_rss_kb("VmHWM") - start) / 1024, "seconds": t}))


def run_probe(config: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--probe", json.dumps(config)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        return {"peak_mib": float("nan"), "seconds": float("nan"), "error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_part(models: list[str], steps: list[int]) -> None:
    print(f"\n{'what':10s} {'impl':22s} {'model':20s} {'n':>5s} {'peak MiB':>9s} {'s':>7s}")
    for name in models:
        for what in ("ig", "smoothgrad"):
            configs = [("ours", 32), ("captum", 50 if what == "ig" else 50)]
            for n in steps:
                for impl, size in configs:
                    if what == "smoothgrad" and impl == "captum":
                        size = 32  # nt_samples_batch_size: samples per input per batch
                    r = run_probe({"what": what, "impl": impl, "model": name, "batch": 1, "n": n, "ibs": size})
                    label = f"{impl} (batch {size})"
                    print(f"{what:10s} {label:22s} {name:20s} {n:5d} {r['peak_mib']:9.0f} {r['seconds']:7.1f}"
                          + (f"  {r['error']}" if "error" in r else ""), flush=True)
            if what == "ig":  # Captum's default: every step of every input in one batch
                r = run_probe({"what": what, "impl": "captum", "model": name, "batch": 1, "n": 50, "ibs": None})
                print(f"{what:10s} {'captum (default None)':22s} {name:20s} {50:5d} {r['peak_mib']:9.0f} "
                      f"{r['seconds']:7.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=["time", "memory"], choices=["time", "memory"])
    parser.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_lite0"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--methods", nargs="+", default=["smoothgrad", "integrated_gradients", "grad_cam",
                                                         "occlusion"])
    parser.add_argument("--memory-models", nargs="+", default=["efficientnet_lite0"])
    parser.add_argument("--steps", nargs="+", type=int, default=[50, 200, 800])
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(json.loads(args.probe))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    if "time" in args.parts:
        time_part(args.models, args.batches, args.repeats, args.methods)
    if "memory" in args.parts:
        memory_part(args.memory_models, args.steps)


if __name__ == "__main__":
    main()
