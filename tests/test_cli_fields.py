"""`gradsight rf` and `gradsight node` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gradsight.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_rf_table_with_measurement():
    proc = cli("rf", "seed-cnn", "--measure")
    assert proc.returncode == 0, proc.stderr
    l6 = next(line for line in proc.stdout.splitlines() if line.startswith("L6 "))
    # kernel 3, stride 2, RF 33, effective stride 8, effective padding 9 (TF 'same'); centre and corner agree
    assert l6.split()[3:8] == ["3x3", "2x2", "33x33", "8x8", "9x9"] and l6.endswith("=, =")
    assert "12 of 12 units agree" in proc.stdout


def test_rf_json_for_machines():
    proc = cli("rf", "seed-cnn-torch", "--json", "--input-size", "64", "64")
    data = json.loads(proc.stdout)
    assert data["input_size"] == [64, 64]
    l6 = next(layer for layer in data["layers"] if layer["name"] == "L6")
    assert l6["rf_size"] == [33, 33] and l6["effective_padding"] == [16, 16] and l6["aligned"]


def test_rf_of_a_torchvision_architecture_and_a_python_factory():
    proc = cli("rf", "resnet18", "--depth", "2")
    assert proc.returncode == 0 and any(line.startswith("layer4.1 ") for line in proc.stdout.splitlines())
    proc = cli("rf", "gradsight.adapters.torch.zoo:seed_cnn")
    assert proc.returncode == 0 and "33x33" in proc.stdout


def test_node_writes_the_gradient_picture(tmp_path):
    out = tmp_path / "gradient_L6.png"
    proc = cli("node", "seed-cnn", "--layer", "L6", "--unit", "0", "0", "0", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "analytic field: rows 0..23, cols 0..23" in proc.stdout
    assert "measured support: rows 0..23, cols 0..23" in proc.stdout
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[0] > 300 and picture.shape[1] > 300


def test_node_and_rf_bad_input(tmp_path):
    for args, phrase in [
        (("node", "seed-cnn", "--layer", "L9", "--unit", "0", "0", "0"), "unknown layer 'L9'"),
        (("node", "seed-cnn", "--layer", "L6", "--unit", "16", "0", "0"), "0..15 x 0..15"),
        (("node", "seed-cnn", "--layer", "L6", "--unit", "0", "0", "99"), "0..63"),
        (("rf", "seed-cnn", "--input-size", "3", "3"), "input size"),
        (("rf", "no.such.module:factory"), "importable module"),
        (("rf", "resnet5"), "Did you mean 'resnet50'"),
    ]:
        proc = cli(*args, "--out", str(tmp_path / "x.png")) if args[0] == "node" else cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert phrase in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "x.png").exists()


def test_keras_models_in_the_cli(tmp_path):
    proc = cli("rf", "keras:seed-cnn", "--measure")
    assert proc.returncode == 0, proc.stderr[-2000:]
    l6 = next(line for line in proc.stdout.splitlines() if line.startswith("L6 "))
    assert l6.split()[3:8] == ["3x3", "2x2", "33x33", "8x8", "9x9"] and l6.endswith("=, =")
    out = tmp_path / "g.png"
    proc = cli("node", "keras:seed-cnn", "--layer", "L6", "--unit", "0", "0", "0", "--out", str(out))
    assert proc.returncode == 0 and "analytic field: rows 0..23, cols 0..23" in proc.stdout and out.exists()
    import os

    proc = cli("saliency", "--model", "keras:resnet50", "--out", str(tmp_path / "o"),
               env={**os.environ, "KERAS_HOME": str(tmp_path / "keras-home")})
    assert proc.returncode == 2 and "--weights FILE" in proc.stderr and "Traceback" not in proc.stderr
