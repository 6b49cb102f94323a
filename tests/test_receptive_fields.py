"""Analytic receptive fields: closed forms written as arithmetic, published numbers, and the tracer's rules."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import gradsight
from gradsight.adapters.torch.trace import trace_fields
from gradsight.adapters.torch.zoo import seed_cnn
from gradsight.errors import UnsupportedGeometryError
from gradsight.receptive.algebra import AxisField, chain_field

KERNELS = (5, 5, 3, 3, 3, 3)
STRIDES = (1, 2, 1, 2, 1, 2)


def test_closed_form_of_the_seed_cnn():
    # r_L = 1 + sum_l (k_l - 1) * prod_{i<l} s_i
    expected_r = [
        1 + 4,
        1 + 4 + 4 * 1,
        1 + 4 + 4 * 1 + 2 * 2,
        1 + 4 + 4 * 1 + 2 * 2 + 2 * 2,
        1 + 4 + 4 * 1 + 2 * 2 + 2 * 2 + 2 * 4,
        1 + 4 + 4 * 1 + 2 * 2 + 2 * 2 + 2 * 4 + 2 * 4,
    ]
    assert expected_r == [5, 9, 13, 17, 25, 33]
    for depth in range(1, 7):
        field = chain_field(zip(KERNELS[:depth], STRIDES[:depth]))
        assert field.size == expected_r[depth - 1]
        assert field.stride == [1, 2, 2, 4, 4, 8][depth - 1]


@pytest.mark.parametrize(("padding", "lefts", "corner_last"), [
    ("same", (2, 1, 1, 0, 1, 0), 23),   # TF: p_left = floor((k - s) / 2)
    ("torch", (2, 2, 1, 1, 1, 1), 16),  # PyTorch: k // 2 on both sides
])
def test_seed_cnn_traced_equals_closed_form(padding, lefts, corner_last):
    report = gradsight.receptive_field("seed-cnn" if padding == "same" else "seed-cnn-torch")
    product, total_padding = 1, 0
    for i, (k, s, p) in enumerate(zip(KERNELS, STRIDES, lefts), start=1):
        total_padding += p * product  # P = sum_l p_l * prod_{i<l} s_i
        product *= s
        layer = report[f"L{i}"]
        assert layer.padding == (total_padding,) * 2
        assert layer.stride == (product,) * 2
        assert layer.geometry.kernel == (k, k) and layer.geometry.stride == (s, s)
    assert total_padding == (9 if padding == "same" else 16)
    # node (0, 0) of L6 sees rows/cols 0 .. -P + r - 1 = corner_last, clipped at 0
    assert report["L6"].rect((0, 0)) == ((0, -total_padding + 33 - 1),) * 2 == ((0, corner_last),) * 2


def test_published_receptive_fields():
    # Araujo, Norris & Sim (Distill 2019), Table 1: VGG16 r=212 S=32 P=90; AlexNet r=195 S=32;
    # ResNet-50 (v1: stride in the first 1x1 conv) r=483 S=32; Inception v3 r=1311 S=32 P=618.
    vgg = trace_fields(torchvision.models.vgg16().features, (3, 224, 224)).layers[-1]
    assert (vgg.size, vgg.stride, vgg.padding) == ((212, 212), (32, 32), (90, 90))
    alex = trace_fields(torchvision.models.alexnet().features, (3, 224, 224)).layers[-1]
    assert (alex.size, alex.stride) == ((195, 195), (32, 32))
    resnet = torchvision.models.resnet50()
    for stage in (resnet.layer2, resnet.layer3, resnet.layer4):
        stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    v1 = trace_fields(resnet, (3, 224, 224))["layer4"]
    assert (v1.size, v1.stride) == ((483, 483), (32, 32))
    inception = trace_fields(torchvision.models.inception_v3(init_weights=False, aux_logits=False), (3, 299, 299))
    last = inception["Mixed_7c"]
    assert (last.size, last.stride, last.padding) == ((1311, 1311), (32, 32), (618, 618))
    assert last.aligned


def test_torchvision_resnet50_is_v1_5_with_visible_arithmetic():
    report = gradsight.receptive_field(torchvision.models.resnet50(), (224, 224))
    # conv1 7/2 -> 1 + 6 = 7; maxpool 3/2 at S=2 -> 7 + 2*2 = 11; layer1: 3 blocks of 3x3 at S=4 -> 11 + 3*2*4
    r1 = 1 + 6 + 2 * 2 + 3 * 2 * 4
    # v1.5: the stride sits in each stage's first 3x3 conv, applied at the stage's incoming stride
    r2 = r1 + 2 * 4 + 3 * 2 * 8
    r3 = r2 + 2 * 8 + 5 * 2 * 16
    r4 = r3 + 2 * 16 + 2 * 2 * 32
    assert [report[n].size[0] for n in ("layer1", "layer2", "layer3", "layer4")] == [r1, r2, r3, r4]
    assert report["layer4"].size == (427, 427) and report["layer4"].stride == (32, 32)
    assert report["avgpool"].is_global and report["fc"].is_global


def test_dilation_enters_as_effective_kernel():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=2, dilation=2), nn.Conv2d(2, 2, 3, stride=2, dilation=3),
                        nn.MaxPool2d(3, stride=1, dilation=2))
    report = trace_fields(net, (1, 64, 64))
    # k' = d (k - 1) + 1: 5, then 7 at stride 1, then 5 at stride 2
    assert report["0"].size == (5, 5)
    assert report["1"].size == (5 + (7 - 1) * 1,) * 2
    assert report["2"].size == (5 + 6 + (5 - 1) * 2,) * 2
    assert report["1"].geometry.dilation == (3, 3)


def test_rectangular_kernels_and_asymmetric_padding():
    net = nn.Sequential(nn.ZeroPad2d((3, 0, 1, 2)), nn.Conv2d(1, 1, (3, 5), stride=(1, 2)))
    layer = trace_fields(net, (1, 20, 30))["1"]
    assert layer.size == (3, 5) and layer.stride == (1, 2) and layer.padding == (1, 3)


def test_rows_no_unit_reads_are_clipped_away():
    # 128 rows, a 3x3/2 convolution without padding: 63 units, the last (62) reads rows 2*62 .. 2*62+2 =
    # 124..126 — row 127 is never read. A 3x3/1 convolution with padding 1 on top: its last unit (62) reads
    # units 61..63 of the first (63 is padding), so rows 2*61 .. 2*62+2 = 122..126, not ..127.
    net = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2), nn.Conv2d(1, 1, 3, padding=1))
    report = trace_fields(net, (1, 128, 128))
    assert report["0"].rect((62, 0)) == ((124, 126), (0, 2))
    assert report["1"].rect((62, 62)) == ((122, 126), (122, 126))
    assert report["1"].rect((0, 0)) == ((0, 4), (0, 4))  # units -1 (padding), 0, 1: rows 0 .. 2*1+2
    assert report["1"].field.reach == ((0, 126), (0, 126))
    torch.manual_seed(0)
    _, check = gradsight.measure_field(net.eval(), "1", (62, 62), input_size=(128, 128), mode="linear")
    assert check.measured == check.analytic == ((122, 126), (122, 126))
    # SqueezeNet 1.1 and Inception v3 have such layers; tests/test_measured_fields.py checks them whole


def test_misaligned_paths_are_reported():
    class TwoPaths(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 1, 3, padding=1)
            self.b = nn.Sequential(nn.Conv2d(1, 1, 3), nn.ZeroPad2d((2, 0, 2, 0)))  # same size, shifted by one

        def forward(self, x):
            return self.a(x) + self.b(x)

    net = TwoPaths()
    report = trace_fields(net, (1, 16, 16))
    assert report["a"].aligned and report["b"].aligned
    whole = report["(model)"]
    assert not whole.aligned and "centred at" in whole.field.misaligned
    # the rectangle is the union of both paths: [u - 1, u + 1] and [u - 2, u]
    assert whole.rect((8, 8)) == ((6, 9), (6, 9))


def test_concatenation_and_residual_take_the_larger_field():
    class Inception(nn.Module):
        def __init__(self):
            super().__init__()
            self.small = nn.Conv2d(1, 2, 1)
            self.big = nn.Conv2d(1, 2, 5, padding=2)

        def forward(self, x):
            return torch.cat([self.small(x), self.big(x)], dim=1) + x

    layer = trace_fields(Inception(), (1, 12, 12)).layers[-1]
    assert layer.size == (5, 5) and layer.aligned


def test_unknown_geometry_is_refused_by_name():
    class Upsampler(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)
            self.up = nn.Upsample(scale_factor=2)

        def forward(self, x):
            return self.up(self.conv(x))

    with pytest.raises(UnsupportedGeometryError) as info:
        trace_fields(Upsampler(), (1, 16, 16))
    assert "'up'" in str(info.value) and "upsample" in str(info.value)


def test_input_smaller_than_the_kernel_is_one_clear_error():
    with pytest.raises(gradsight.BadInputError, match="input size"):
        trace_fields(seed_cnn("torch"), (1, 3, 3))


def test_coordinate_round_trip_unit_centre_unit():
    for name in ("seed-cnn", "seed-cnn-torch"):
        report = gradsight.receptive_field(name)
        for layer in report.rows():
            if layer.is_global:
                continue
            rows, cols = layer.spatial_shape
            for unit in [(0, 0), (rows // 2, cols // 3), (rows - 1, cols - 1)]:
                assert layer.unit_at(layer.centre(unit)) == unit


def test_axis_field_maps_both_ways():
    field = AxisField().then(3, 2, 1).then(3, 2, 1)
    assert (field.size, field.stride, field.padding) == (7, 4, 3)
    assert field.span(5) == (5 * 4 - 3, 5 * 4 - 3 + 7 - 1)
    assert field.unit_at(field.centre(5)) == 5


def test_train_mode_batchnorm_is_traced_in_eval_mode_and_restored():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    before = net[1].running_mean.clone()
    report = trace_fields(net, (1, 8, 8))
    assert report["1"].size == (3, 3)
    assert net.training and net[1].training and torch.equal(net[1].running_mean, before)


def test_analytic_fields_of_resnet50_are_fast_enough_to_be_interactive(monkeypatch):
    # Not a timing test (timings live in bench/); this keeps the tracer on a single forward pass, on meta.
    from gradsight.adapters.torch import trace as torch_fields

    calls = []
    run = torch_fields._run
    monkeypatch.setattr(torch_fields, "_run", lambda *args: calls.append(args[2].type) or run(*args))
    trace_fields(torchvision.models.resnet50(), (3, 224, 224))
    assert calls == ["meta"]


# --- the trace needs no pixel values: its memory and time do not grow with the input ---------------------

_TRACE_4096 = """
import json, resource, sys, time
limit = 3 * 2 ** 30  # bytes of heap: the real tensors of a 4096 x 4096 ResNet50 run would need about 30 GiB
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
import torchvision
from gradsight.adapters.torch.trace import trace_fields
net = torchvision.models.resnet50()
start = time.perf_counter()
report = trace_fields(net, (3, 4096, 4096))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "layers": {n: [report[n].output_shape, report[n].size, report[n].stride,
                  report[n].padding] for n in ("conv1", "maxpool", "layer1", "layer2", "layer3", "layer4")}}))
"""


@pytest.mark.slow  # a fresh interpreter: importing torch and building ResNet50 take most of its ~10 s
@pytest.mark.skipif(not hasattr(__import__("resource"), "RLIMIT_DATA"), reason="needs RLIMIT_DATA (Linux)")
def test_trace_at_4096_pixels_needs_no_pixel_memory():
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _TRACE_4096], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["seconds"] < 10
    small = trace_fields(torchvision.models.resnet50(), (3, 224, 224))
    # output rows: conv1 7/2 pad 3: (4096 + 2 * 3 - 7) // 2 + 1; maxpool 3/2 pad 1: (2048 + 2 * 1 - 3) // 2 + 1;
    # then strides 1, 2, 2, 2
    rows = {"conv1": (4096 + 2 * 3 - 7) // 2 + 1, "maxpool": (2048 + 2 * 1 - 3) // 2 + 1}
    rows.update(layer1=1024, layer2=1024 // 2, layer3=1024 // 4, layer4=1024 // 8)
    channels = {"conv1": 64, "maxpool": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    for name, (shape, size, stride, padding) in got["layers"].items():
        assert shape == [channels[name], rows[name], rows[name]], name
        # size, stride and padding do not depend on the input size
        assert (tuple(size), tuple(stride), tuple(padding)) == (small[name].size, small[name].stride,
                                                                small[name].padding), name
    assert got["layers"]["layer3"][1:] == [[267, 267], [16, 16], [133, 133]]


def _reports_equal(a, b) -> None:
    assert [(f.name, f.kind, f.output_shape, f.field, f.geometry, f.seq, f.calls, f.spatial_axes)
            for f in a.layers] == [(f.name, f.kind, f.output_shape, f.field, f.geometry, f.seq, f.calls,
                                    f.spatial_axes) for f in b.layers]
    assert a.reads == b.reads and a.positional == b.positional


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "squeezenet1_1", "convnext_atto (channels-last)",
                                  "tf_efficientnet_lite0"])
def test_meta_trace_equals_the_trace_on_real_tensors(name, monkeypatch):
    import timm

    from gradsight.adapters.torch import trace as torch_fields

    torch.manual_seed(0)
    if name.startswith("convnext"):
        net = timm.create_model("convnext_atto", conv_mlp=False)
    elif name.startswith("tf_"):
        net = timm.create_model(name)
    else:
        net = getattr(torchvision.models, name)()
    meta = trace_fields(net, (3, 96, 96))
    monkeypatch.setattr(torch_fields, "_meta_copy", lambda model: None)  # the real-tensor path
    _reports_equal(meta, trace_fields(net, (3, 96, 96)))


def test_trace_leaves_the_model_and_its_hooks_alone():
    net = seed_cnn("torch").train()
    before = {k: (v.data_ptr(), v.device) for k, v in net.state_dict().items()}
    calls = []
    handle = net.L3.register_forward_hook(lambda m, a, out: calls.append(out.device))
    report = trace_fields(net, (1, 64, 64))
    handle.remove()
    assert report["L3"].size == (13, 13)
    assert calls == []  # the analytic trace runs a copy on the meta device, without the user's hooks
    assert {k: (v.data_ptr(), v.device) for k, v in net.state_dict().items()} == before
    assert net.training and all(m.training for m in net.modules())


class _NeedsValues(nn.Module):
    """Looks at a value (data-dependent control flow): impossible on the meta device, fine on real tensors."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y if float(y.abs().sum()) >= 0 else -y


def test_models_that_need_values_are_traced_on_real_tensors():
    report = trace_fields(_NeedsValues(), (1, 20, 20))
    assert report["conv"].size == (3, 3)


class _OutOfMemory(nn.Module):
    def __init__(self, error):
        super().__init__()
        self.conv, self.error = nn.Conv2d(1, 1, 3), error

    def forward(self, x):
        self.conv(x)
        raise self.error


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 32212254720 bytes"),
                                   MemoryError()])
def test_out_of_memory_is_reported_as_such(error):
    with pytest.raises(gradsight.BadInputError, match="out of memory") as info:
        trace_fields(_OutOfMemory(error), (1, 64, 64))
    assert "check the input size" not in str(info.value).lower()


# --- what the trace cannot follow is refused by name, never reported as a field ---------------------------


class _Windows(nn.Module):
    """Swin-style: a convolution, then (optionally) a cyclic shift and a partition into 4 x 4 windows that a
    linear layer mixes within each window, then the windows put back."""

    def __init__(self, shift: bool):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.mix = nn.Linear(4 * 16, 4 * 16)
        self.shift = shift

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 3, 1)  # N H W C
        if self.shift:
            y = torch.roll(y, shifts=(-2, -2), dims=(1, 2))
        n, h, w, c = y.shape
        windows = y.view(n, h // 4, 4, w // 4, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 16 * c)
        mixed = self.mix(windows).view(n, h // 4, w // 4, 4, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
        return mixed.permute(0, 3, 1, 2)


@pytest.mark.parametrize("shift", [False, True])
def test_window_partitions_and_rolls_are_refused_by_name(shift):
    with pytest.raises(UnsupportedGeometryError) as info:
        trace_fields(_Windows(shift), (1, 16, 16))
    message = str(info.value)
    if shift:
        assert "roll" in message
    else:
        assert "view" in message and "splits spatial axis" in message
    assert "global" not in message
    assert "rf --measure" not in message  # it fails the same way; the message says what works instead
    assert "crop=False" in message


def test_swin_window_attention_is_refused_not_reported_global():
    import timm

    net = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    with pytest.raises(UnsupportedGeometryError) as info:
        gradsight.receptive_field(net, (224, 224))
    message = str(info.value)
    assert "layers.0.blocks.0" in message and "splits spatial axis" in message  # window_partition's view


def test_flattening_and_token_sequences_stay_global():
    # a classifier's flatten and a ViT-style token sequence mix every position: global, as before
    head = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 14 * 14, 3))
    assert trace_fields(head, (1, 16, 16))["2"].is_global
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                                               hidden_dim=8, mlp_dim=16)
    tokens = trace_fields(vit, (3, 32, 32))
    assert tokens["conv_proj"].size == (16, 16) and tokens["encoder"].is_global
