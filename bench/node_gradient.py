"""gradsight.node_gradient vs Captum's NeuronGradient, side by side in one process on the same inputs.

Run:  .venv/bin/python bench/node_gradient.py [--repeats 7]

Cases: (a) units (0, 0, 0) and a centre unit of L6 of the seed CNN (TF 'same' padding, 128 x 128 x 1), and all
256 units of one L6 channel (gradsight's batched form against one Captum call per unit);
(b) a centre unit of torchvision ResNet50's layer3 (random weights) at 224 x 224, where the unit's analytic
field (267 px) covers the whole input, and at 512 x 512, where it does not. For each: median time per call of
both, their ratio, and the largest difference of the gradients relative to the largest gradient. Then the time
to compute the analytic receptive field of every layer of ResNet50 (one trace, no cache).
gradsight's first call per model also traces its fields (cached afterwards); that one-time cost is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torchvision
from captum.attr import NeuronGradient

import gradsight
from gradsight.adapters.torch.trace import trace_fields
from gradsight.adapters.torch.zoo import seed_cnn


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def case(label: str, net, layer: str, unit, x_hwc: np.ndarray, repeats: int) -> float:
    module = net.get_submodule(layer)
    x = torch.from_numpy(x_hwc).permute(2, 0, 1)[None].contiguous()
    row, col, channel = unit
    explainer = NeuronGradient(net, module)

    def captum():
        return explainer.attribute(x, neuron_selector=(channel, row, col))

    def ours():
        return gradsight.node_gradient(net, layer, unit, x_hwc)

    first = _timed(ours)
    reference = captum()[0].permute(1, 2, 0).detach().numpy()
    result = ours()
    times = {"gradsight": [], "captum": []}
    for _ in range(repeats):
        times["gradsight"].append(_timed(ours))
        times["captum"].append(_timed(captum))
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = float(np.abs(result.gradient - reference).max() / max(np.abs(reference).max(), 1e-30))
    assert np.abs(reference).max() > 0, "a dead unit: pick another"
    print(f"{label:44s} {med['gradsight'] * 1e3:9.2f} {med['captum'] * 1e3:9.2f} "
          f"{med['captum'] / med['gradsight']:8.1f}x {diff:9.1e} {'yes' if result.cropped else 'no':>7s} "
          f"{first * 1e3:9.1f}", flush=True)
    return med["captum"] * 1e3


def strongest_channel(net, module, x_hwc: np.ndarray, position) -> int:
    """The channel with the largest activation at ``position``: a unit whose ReLU is on (a dead one has a zero
    gradient, which would make the comparison empty)."""
    from gradsight.adapters.torch.layers import layer_output

    with torch.no_grad():
        z = layer_output(net, module, torch.from_numpy(x_hwc).permute(2, 0, 1)[None])
    return int(z[0, :, position[0], position[1]].argmax())


def whole_channel(label: str, net, layer: str, channel: int, x_hwc: np.ndarray, repeats: int) -> None:
    """Every unit of one channel: gradsight's batched form against Captum called once per unit."""
    module = net.get_submodule(layer)
    x = torch.from_numpy(x_hwc).permute(2, 0, 1)[None].contiguous()
    explainer = NeuronGradient(net, module)
    ours = gradsight.node_gradients(net, layer, channel=channel, inputs=x_hwc)
    positions = [tuple(int(v) for v in u[:2]) for u in ours.units]

    def captum():
        return [explainer.attribute(x, neuron_selector=(channel, r, c)) for r, c in positions]

    reference = np.stack([g[0].permute(1, 2, 0).detach().numpy() for g in captum()])
    times = {"gradsight": [], "captum": []}
    for _ in range(repeats):
        times["gradsight"].append(_timed(lambda: gradsight.node_gradients(net, layer, channel=channel,
                                                                           inputs=x_hwc)))
        times["captum"].append(_timed(captum))
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = float(np.abs(ours.gradients - reference).max() / max(np.abs(reference).max(), 1e-30))
    print(f"{label:44s} {med['gradsight'] * 1e3:9.1f} {med['captum'] * 1e3:9.1f} "
          f"{med['captum'] / med['gradsight']:8.1f}x {diff:9.1e} {'yes' if ours.cropped else 'no':>7s} "
          f"{'':>9s}", flush=True)


def seed_cnn_floor(net, captum_ms: float, repeats: int) -> None:
    """No gradsight code at all: the six convolutions of L1..L6 as valid convolutions on the 33 x 33 input
    cone of one unit, with autograd — the least an autograd computation of this unit's gradient can run."""
    import torch.nn.functional as F

    convs = [net.get_submodule(f"L{i}.conv") for i in range(1, 7)]
    x = torch.rand(1, 1, 33, 33)

    def bare():
        cone = x.clone().requires_grad_(True)
        z = cone
        for conv in convs:
            z = torch.relu(F.conv2d(z, conv.weight, conv.bias, conv.stride))
        return torch.autograd.grad(z[0, 0, 0, 0], cone)

    bare()
    ms = statistics.median(_timed(bare) for _ in range(max(repeats, 50))) * 1e3
    print(f"  floor: bare PyTorch on the 33x33 cone, valid convolutions {ms:6.2f} ms "
          f"-> at most {captum_ms / ms:4.1f}x over Captum", flush=True)


def resnet_floor(resnet, size: int, captum_ms: float, repeats: int) -> None:
    """No gradsight code: forward and backward of the stem, layer1 and layer2 alone (BatchNorm folded,
    channels-last). At 224 the centre unit of layer3 sees all of layer2's output, so any exact method runs
    at least this much; the ratio printed is the most any such method could gain over Captum."""
    from gradsight.adapters.torch.folding import folded_copy

    x = torch.rand(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    net = folded_copy(resnet, x) or resnet
    stages = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2)
    upstream = None

    def bare():
        nonlocal upstream
        inp = x.clone(memory_format=torch.channels_last).requires_grad_(True)
        out = stages(inp)
        upstream = torch.randn_like(out) if upstream is None else upstream
        return torch.autograd.grad(out, inp, upstream)

    bare()
    ms = statistics.median(_timed(bare) for _ in range(repeats)) * 1e3
    print(f"  floor: stem..layer2 forward + backward at {size}, no gradsight code {ms:6.2f} ms "
          f"-> at most {captum_ms / ms:4.1f}x over Captum", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'case':44s} {'ours ms':>9s} {'captum ms':>9s} {'speed-up':>9s} {'max diff':>9s} {'cropped':>7s} "
          f"{'1st call':>9s}")
    net = seed_cnn("same")
    x = np.random.default_rng(0).random((128, 128, 1), dtype=np.float32)
    case("seed CNN L6 unit (0, 0, 0)", net, "L6", (0, 0, 0), x, args.repeats)
    captum_ms = case("seed CNN L6 centre unit (8, 8, 0)", net, "L6", (8, 8, 0), x, args.repeats)
    seed_cnn_floor(net, captum_ms, args.repeats)
    whole_channel("seed CNN L6, all 256 units of channel 0", net, "L6", 0, x, 3)
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50().eval()
    for size in (224, 512):
        x = np.random.default_rng(1).random((size, size, 3), dtype=np.float32)
        centre = size // 32  # layer3 has stride 16: the centre unit of a size/16 grid
        channel = strongest_channel(resnet, resnet.layer3, x, (centre, centre))
        captum_ms = case(f"ResNet50 layer3 centre unit ({centre}, {centre}, {channel}) at {size}", resnet, "layer3",
                         (centre, centre, channel), x, max(3, args.repeats // 2))
        if size == 224:
            resnet_floor(resnet, size, captum_ms, max(3, args.repeats // 2))
    fresh = torchvision.models.resnet50()
    seconds = min(_timed(lambda: trace_fields(fresh, (3, 224, 224))) for _ in range(3))
    layers = len(trace_fields(fresh, (3, 224, 224)))
    print(f"analytic receptive fields of all {layers} modules of ResNet50 at 224: {seconds:.3f} s")


if __name__ == "__main__":
    main()
