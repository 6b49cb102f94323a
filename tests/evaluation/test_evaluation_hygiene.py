"""The user's model stays bit-identical through sanity checks and faithfulness, also when a call fails midway."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from evaluation_models import assert_same, normal_inputs, snapshot
from testkit import small_cnn

import gradsight.evaluation.faithfulness as faithfulness_module
import gradsight.evaluation.sanity as sanity_module
from gradsight.errors import GradsightError
from gradsight.evaluation.faithfulness import faithfulness
from gradsight.evaluation.sanity import sanity_check


def mixed_state_net() -> torch.nn.Module:
    net = small_cnn(seed=5)
    net.train()
    net[1].eval()  # a mix of modes must come back as it was, module by module
    net[0].weight.requires_grad_(False)
    net[3].weight.grad = torch.full_like(net[3].weight, 0.25)
    net[12].register_forward_hook(lambda module, args, out: None)
    return net


def test_sanity_check_leaves_the_model_bit_identical():
    net, x = mixed_state_net(), normal_inputs(1, 16, seed=1)
    x_before = x.copy()
    before = snapshot(net)
    sanity_check(net, x, methods=["gradient", "guided_backprop", "grad_cam"])
    sanity_check(net, x, methods=["gradient"], order="independent")
    assert_same(before, snapshot(net))
    np.testing.assert_array_equal(x, x_before)


def test_faithfulness_leaves_the_model_bit_identical():
    net, x = mixed_state_net(), normal_inputs(1, 16, seed=1)
    before = snapshot(net)
    for metric in ("deletion", "insertion"):
        faithfulness(net, x, method="gradient", metric=metric, steps=8)
    assert_same(before, snapshot(net))


def test_the_fast_forward_path_leaves_the_model_bit_identical():
    # no hook this time: the BatchNorm-folded copy is built and used (a hooked model runs as it is)
    net, x = mixed_state_net(), normal_inputs(1, 16, seed=1)
    net[12]._forward_hooks.clear()
    before = snapshot(net)
    result = faithfulness(net, x, method="gradient", metric="deletion", steps=8)
    assert result.options["fast"] is True
    assert_same(before, snapshot(net))
    # and the model's own forward pass afterwards is what it was (nothing left in inference mode)
    with torch.enable_grad():
        out = net(torch.from_numpy(x).permute(0, 3, 1, 2)).sum()
        out.backward()
    assert net[0].bias.grad is not None


def test_an_unknown_method_listed_second_fails_before_any_work_and_touches_nothing(monkeypatch):
    net, x = mixed_state_net(), normal_inputs(1, 16, seed=1)
    before = snapshot(net)
    calls = []
    real = sanity_module.attribute
    monkeypatch.setattr(sanity_module, "attribute", lambda *a, **k: calls.append(k.get("method")) or real(*a, **k))
    with pytest.raises(GradsightError, match="gradinet"):
        sanity_check(net, x, methods=["gradient", "gradinet"])
    assert calls == []  # refused up front: no map was computed for nothing
    assert_same(before, snapshot(net))


@pytest.mark.parametrize("fail_at", [2, 5])
def test_a_failure_midway_through_the_randomisation_leaves_the_model_as_it_was(monkeypatch, fail_at):
    net, x = mixed_state_net(), normal_inputs(1, 16, seed=1)
    before = snapshot(net)
    calls = []
    real = sanity_module.attribute

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(sanity_module, "attribute", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        sanity_check(net, x, methods=["gradient", "guided_backprop"])
    assert len(calls) == fail_at
    assert_same(before, snapshot(net))


def test_a_failure_midway_through_a_curve_leaves_the_model_as_it_was(monkeypatch):
    net, x = mixed_state_net(), normal_inputs(2, 16, seed=1)
    before = snapshot(net)
    real, calls = faithfulness_module.curve, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("interrupted (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(faithfulness_module, "curve", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        faithfulness(net, x, method="gradient", steps=8, batch_size=3)
    assert_same(before, snapshot(net))
