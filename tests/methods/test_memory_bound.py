"""Integrated Gradients and SmoothGrad hold memory for ``internal_batch_size`` evaluations, not for ``n_steps`` or
``n_samples``: every gradient pass is at most that size, and what the method keeps between passes (NumPy
arrays, which tracemalloc sees) does not grow with the number of evaluations. BENCHMARKS.md shows the process's
peak memory at 50, 200 and 800 on ResNet50; this is the test that fails when a method starts keeping them all."""

from __future__ import annotations

import tracemalloc

import pytest
from method_models import normal_inputs

from gradsight.adapters.torch.adapter import TorchAdapter
from gradsight.methods.attribute import attribute


@pytest.mark.parametrize("method,grows", [("integrated_gradients", "n_steps"), ("smoothgrad", "n_samples")])
def test_passes_and_kept_memory_do_not_grow_with_the_evaluations(cnn, monkeypatch, method, grows):
    sizes = []
    real = TorchAdapter.score_gradient

    def recorded(self, model, inputs, *args, **kwargs):
        sizes.append(len(inputs))
        return real(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(TorchAdapter, "score_gradient", recorded)
    x = normal_inputs(2, 32, seed=3)
    attribute(cnn, x, method=method, **{grows: 2})  # imports and first-call caches outside the measurement
    peaks = {}
    for n in (50, 800):
        sizes.clear()
        tracemalloc.start()
        try:
            attribute(cnn, x, method=method, target=[1, 2], internal_batch_size=4, **{grows: n})
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert max(sizes) <= 4 and sum(sizes) == 2 * n
    # One evaluation's gradient is 12 KiB here: keeping 800 of them would add 19 MiB, 16x more evaluations.
    assert peaks[800] < 1.25 * peaks[50] + 256 * 1024, peaks
