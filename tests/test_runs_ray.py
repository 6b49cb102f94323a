"""The Ray engine (issue 13) on a local Ray started once per test session: same maps as the local engine (to
float16 rounding), same layout and manifest, resuming a run the local engine started. Not skipped: the test
command installs the `ray` extra."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import ray
from testkit import F16_ATOL, F16_RTOL, make_folder, tiny_model

from gradsight.runs import run_dataset


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray (2 CPUs) for the whole test session: starting one takes seconds."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    if started:
        ray.shutdown()


def lines(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_ray_engine_resumes_a_local_run_and_equals_the_local_engine(local_ray, tmp_path):
    root = tmp_path / "photos"
    good = make_folder(root, 30, seed=3)
    model = tiny_model()
    local_out, mixed_out = tmp_path / "local", tmp_path / "mixed"
    local = run_dataset([root], local_out, model=model, recursive=True, batch_size=4)
    assert (local.done, local.failed) == (len(good), 1)

    first = run_dataset([root], mixed_out, model=model, recursive=True, batch_size=4, limit=10)
    assert first.done == 10
    rest = run_dataset([root], mixed_out, model=model, recursive=True, batch_size=4, engine="ray", workers=2,
                       actor_cpus=1)
    assert (rest.skipped, rest.done, rest.failed) == (10, len(good) - 10, 1)
    assert [f[0] for f in rest.failures] == ["corrupt.jpg"]
    assert rest.failures[0][2] == next(f[2] for f in local.failures)  # the same message from an actor

    by_ray = [r for r in lines(mixed_out) if r["engine"]["name"] == "ray"]
    assert len(by_ray) == len(good) - 10 + 1
    assert {r["engine"]["actors"] for r in by_ray} == {2}
    assert {r["timing"]["worker"]["torch_threads"] for r in by_ray if r["status"] == "ok"} == {1}
    local_records = {r["path"]: r for r in lines(local_out)}
    for record in by_ray:
        twin = local_records[record["path"]]
        assert record["status"] == twin["status"] and record["key"] == twin["key"]
        if record["status"] != "ok":
            continue
        assert record["map"]["file"] == twin["map"]["file"] and record["prediction"]["class"] == \
            twin["prediction"]["class"]
        mine = np.load(mixed_out / record["map"]["file"]).astype(np.float32)
        theirs = np.load(local_out / twin["map"]["file"]).astype(np.float32)
        np.testing.assert_allclose(mine, theirs, rtol=F16_RTOL, atol=F16_ATOL + 1e-5 * theirs.max())


@pytest.mark.slow
def test_registry_methods_on_ray_equal_the_local_engine_and_a_refused_option_stops_the_run(local_ray, tmp_path,
                                                                                           monkeypatch):
    from gradsight.errors import BadInputError
    from gradsight.runs import engine

    root = tmp_path / "photos"
    good = make_folder(root, 8, seed=5)
    model = tiny_model()
    methods, options = "integrated_gradients,grad_cam,smoothgrad", {"n_steps": 3, "smoothgrad.n_samples": 2}
    local = run_dataset([root], tmp_path / "local", model=model, recursive=True, batch_size=4, methods=methods,
                        options=options)
    on_ray = run_dataset([root], tmp_path / "ray", model=model, recursive=True, batch_size=4, methods=methods,
                         options=options, engine="ray", workers=2)
    assert (local.done, local.failed) == (on_ray.done, on_ray.failed) == (3 * len(good), 3)
    twins = {(r["path"], r["method"]): r for r in lines(tmp_path / "local")}
    for record in lines(tmp_path / "ray"):
        twin = twins[(record["path"], record["method"])]
        assert record["status"] == twin["status"] and record["key"] == twin["key"]
        if record["status"] != "ok":
            continue
        # the CAM layer found, the noise sigma of this image, the baseline: resolved the same way on an actor
        assert record["target"] == twin["target"] and record["effective"] == twin["effective"]
        for name, value in twin["per_image"].items():  # Integrated Gradients' completeness gap
            assert record["per_image"][name] == pytest.approx(value, rel=1e-4, abs=1e-6)
        mine = np.load(tmp_path / "ray" / record["map"]["file"]).astype(np.float32)
        theirs = np.load(tmp_path / "local" / twin["map"]["file"]).astype(np.float32)
        np.testing.assert_allclose(mine, theirs, rtol=F16_RTOL, atol=F16_ATOL + 1e-5 * np.abs(theirs).max())

    # the same refusal from an actor as from the local engine, and no image marked failed for it
    monkeypatch.setattr(engine, "check_methods", lambda loaded, names, options: None)  # no check up front
    with pytest.raises(BadInputError, match="n_steps: expected a whole number >= 1, got 0"):
        run_dataset([root / "a"], tmp_path / "refused", model=model, batch_size=4, methods="integrated_gradients",
                    options={"n_steps": 0}, engine="ray", workers=1)
    assert not [r for r in lines(tmp_path / "refused") if r["status"] != "ok"]
