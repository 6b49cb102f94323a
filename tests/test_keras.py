"""Keras 3: the same API and the same answers as on PyTorch, checked against tf.GradientTape and Keras' own
preprocessing, published receptive fields, measured gradients, and the PyTorch seed CNN with equal weights."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import gradsight  # noqa: E402
from gradsight.adapters.keras.models import CAFFE  # noqa: E402
from gradsight.adapters.keras.trace import trace_fields  # noqa: E402
from gradsight.adapters.keras.zoo import copy_seed_weights, keras_seed_cnn  # noqa: E402
from gradsight.errors import UnsupportedGeometryError  # noqa: E402


@pytest.fixture(scope="module")
def resnet50():
    keras.utils.set_random_seed(0)
    return keras.applications.ResNet50(weights=None)


def tape_reference(model, x: np.ndarray, targets) -> np.ndarray:
    """Hand-written: logits = avg_pool features @ W + b (the softmax removed), d logit[t] / d x by GradientTape."""
    features = keras.Model(model.inputs, model.get_layer("avg_pool").output)
    dense = model.get_layer("predictions")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = tf.matmul(features(xt, training=False), dense.kernel) + dense.bias
        score = tf.reduce_sum(tf.gather(logits, targets, axis=1, batch_dims=1))
    return np.abs(tape.gradient(score, xt).numpy()).max(axis=-1)


@pytest.mark.slow
def test_resnet50_saliency_equals_gradient_tape(resnet50, ouzel_path):
    model = gradsight.LoadedModel(resnet50, gradsight.ModelSpec("keras:resnet50", "keras", CAFFE))
    from gradsight.inputs import prepare_inputs

    photo = prepare_inputs([ouzel_path], CAFFE).arrays[0]
    x = np.stack([photo, photo[:, ::-1]])
    targets = [20, 517]
    reference = tape_reference(resnet50, x, targets)
    for fast in (True, False):
        ours = gradsight.saliency(model, x, target=targets, fast=fast)
        np.testing.assert_allclose(ours.saliency, reference, rtol=1e-5, atol=1e-5 * reference.max())


def test_caffe_preprocessing_equals_keras(ouzel_path):
    image = keras.utils.load_img(ouzel_path, target_size=(224, 224))
    expected = keras.applications.resnet.preprocess_input(keras.utils.img_to_array(image)[None])[0]
    ours = CAFFE(gradsight.load_image(ouzel_path))
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-4)


def test_published_receptive_fields_of_keras_applications(resnet50):
    # Araujo, Norris & Sim (Distill 2019): ResNet-50 r=483 S=32; MobileNet v1 r=315 S=32 P=126;
    # VGG16 r=212 S=32 P=90; Inception v3 r=1311 S=32 P=618.
    last = trace_fields(resnet50, (3, 224, 224))["conv5_block3_out"]
    assert (last.size, last.stride) == ((483, 483), (32, 32)) and last.aligned
    mobilenet = trace_fields(keras.applications.MobileNet(weights=None), (3, 224, 224))["conv_pw_13_relu"]
    assert (mobilenet.size, mobilenet.stride, mobilenet.padding) == ((315, 315), (32, 32), (126, 126))
    vgg = trace_fields(keras.applications.VGG16(weights=None), (3, 224, 224))["block5_pool"]
    assert (vgg.size, vgg.stride, vgg.padding) == ((212, 212), (32, 32), (90, 90))
    inception = trace_fields(keras.applications.InceptionV3(weights=None), (3, 299, 299))["mixed10"]
    assert (inception.size, inception.stride, inception.padding) == ((1311, 1311), (32, 32), (618, 618))


def test_keras_seed_cnn_fields_agree_with_measured_and_with_closed_form():
    model = keras_seed_cnn()
    checks = gradsight.compare_fields(model, units=("centre", "corner", "far-corner"))
    assert len(checks) == 18 and all(c.agree for c in checks), [c for c in checks if not c.agree]
    # TF 'same': p_left = floor((k - s) / 2) = 2, 1, 1, 0, 1, 0 -> P = 2 + 1 + 1*2 + 0 + 1*4 + 0 = 9
    assert gradsight.receptive_field(model)["L6"].padding == (2 + 1 + 1 * 2 + 0 + 1 * 4 + 0,) * 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet50", "MobileNet", "VGG16"])
def test_keras_applications_analytic_equals_measured_on_every_layer(name):
    # Every layer with a spatial output (ResNet50: 174 of them), at 128 x 128 to keep CI short; the
    # classification head (global pooling, dense) is left out with include_top=False.
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, include_top=False, input_shape=(128, 128, 3))
    report = gradsight.receptive_field(model, (128, 128))
    layers = [layer.name for layer in report.layers if not layer.is_global and len(layer.spatial_shape) == 2]
    checks = gradsight.compare_fields(model, (128, 128), layers=layers)
    assert len(layers) >= 18 and len(checks) >= len(layers)  # centre + corner, padding layers left out
    assert all(c.agree for c in checks), [c for c in checks if not c.agree][:3]


def torch_and_keras_seed():
    from gradsight.adapters.torch.zoo import seed_cnn

    torch_net = seed_cnn("same")
    keras_model = keras_seed_cnn()
    copy_seed_weights(torch_net, keras_model)
    return torch_net, keras_model


def test_cross_framework_equality_of_the_seed_cnn():
    torch_net, keras_model = torch_and_keras_seed()
    x = np.random.default_rng(5).random((3, 128, 128, 1), dtype=np.float32)
    a = gradsight.saliency(torch_net, x, fast=False)
    b = gradsight.saliency(keras_model, x)
    np.testing.assert_allclose(b.logits, a.logits, rtol=1e-4, atol=1e-6)
    assert a.targets.tolist() == b.targets.tolist()
    np.testing.assert_allclose(b.saliency, a.saliency, rtol=1e-4, atol=1e-5 * a.saliency.max())
    for unit in [(0, 0, 0), (8, 8, 5), (15, 3, 9)]:
        ga = gradsight.node_gradient(torch_net, "L6", unit, x[0])
        gb = gradsight.node_gradient(keras_model, "L6", unit, x[0])
        np.testing.assert_allclose(gb.gradient, ga.gradient, rtol=1e-4, atol=1e-5 * max(np.abs(ga.gradient).max(),
                                                                                          1e-12))
        assert ga.rect == gb.rect
    ta, tb = gradsight.receptive_field(torch_net), gradsight.receptive_field(keras_model)
    for i in range(1, 7):
        la, lb = ta[f"L{i}"], tb[f"L{i}"]
        assert (la.size, la.stride, la.padding) == (lb.size, lb.stride, lb.padding)
        assert la.rect((0, 0)) == lb.rect((0, 0))


def test_keras_node_gradients_run_on_windows_and_equal_the_full_input(resnet50):
    torch_net, keras_model = torch_and_keras_seed()
    x = np.random.default_rng(6).random((128, 128, 1), dtype=np.float32)
    for unit in [(0, 0, 0), (8, 8, 5), (15, 15, 9)]:
        cropped = gradsight.node_gradient(keras_model, "L6", unit, x)
        full = gradsight.node_gradient(keras_model, "L6", unit, x, crop=False)
        assert cropped.cropped and not full.cropped
        np.testing.assert_allclose(cropped.gradient, full.gradient, rtol=1e-5,
                                   atol=1e-6 * max(np.abs(full.gradient).max(), 1e-12))
    channel = gradsight.node_gradients(keras_model, "L5", [(0, 0, 1), (31, 31, 2), (12, 20, 3)], inputs=x)
    reference = gradsight.node_gradients(torch_net, "L5", channel.units, inputs=x)
    np.testing.assert_allclose(channel.gradients, reference.gradients, rtol=1e-4,
                               atol=1e-5 * np.abs(reference.gradients).max())
    # Keras ResNet50 (TF "same" padding, stride-2 1x1 shortcuts) on its 224 x 224 input
    image = np.random.default_rng(7).random((224, 224, 3), dtype=np.float32) * 255
    for layer, unit in [("conv2_block1_out", (28, 28, 3)), ("conv3_block2_out", (0, 27, 7))]:
        cropped = gradsight.node_gradient(resnet50, layer, unit, image)
        full = gradsight.node_gradient(resnet50, layer, unit, image, crop=False)
        assert cropped.cropped
        np.testing.assert_allclose(cropped.gradient, full.gradient, rtol=1e-4,
                                   atol=1e-5 * np.abs(full.gradient).max())


def test_model_weights_and_flags_untouched():
    model = keras_seed_cnn()
    model.get_layer("L2").trainable = False
    before = [w.copy() for w in model.get_weights()]
    gradsight.saliency(model, np.random.default_rng(0).random((1, 128, 128, 1), dtype=np.float32))
    gradsight.node_gradient(model, "L3", (1, 2, 3))
    gradsight.compare_fields(model, layers=["L2"])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert [layer.trainable for layer in model.layers] == [True, True, False, True, True, True, True, True, True]


def test_bad_input_on_keras():
    model = keras_seed_cnn()
    with pytest.raises(gradsight.UnknownNameError, match="L6"):
        gradsight.node_gradient(model, "L66", (0, 0, 0))
    with pytest.raises(gradsight.BadInputError, match=r"0\.\.15 x 0\.\.15"):
        gradsight.node_gradient(model, "L6", (16, 0, 0))
    with pytest.raises(gradsight.BadInputError, match="0..9"):
        gradsight.saliency(model, np.zeros((1, 128, 128, 1), np.float32), target=10)
    a, b = keras.Input((8, 8, 1)), keras.Input((8, 8, 1))
    two = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Add()([a, b]))))
    with pytest.raises(gradsight.BadInputError, match="one input and one output"):
        gradsight.saliency(two, np.zeros((1, 8, 8, 1), np.float32))
    x = keras.Input((16, 16, 1))
    upsampling = keras.Model(x, keras.layers.UpSampling2D(name="up")(keras.layers.Conv2D(1, 3, name="c")(x)))
    with pytest.raises(UnsupportedGeometryError, match="'up'.*UpSampling2D"):
        gradsight.receptive_field(upsampling)


def test_keras_resnet50_weights_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(gradsight.WeightsUnavailableError, match="--weights FILE"):
        gradsight.load_model("keras:resnet50")


@pytest.mark.slow
def test_keras_resnet50_end_to_end_from_a_weights_file(tmp_path, resnet50, ouzel_path):
    path = tmp_path / "resnet50.weights.h5"
    resnet50.save_weights(path)
    model = gradsight.load_model("keras:resnet50", weights=path)
    assert all(np.array_equal(a, b) for a, b in zip(model.module.get_weights(), resnet50.get_weights()))
    result = gradsight.saliency(model, ouzel_path)
    assert result.saliency.shape == (1, 224, 224) and result.label(20) == "water ouzel, dipper"
    wrong = tmp_path / "seed.weights.h5"
    keras_seed_cnn().save_weights(wrong)
    with pytest.raises(gradsight.BadInputError, match="same architecture"):
        gradsight.load_model("keras:resnet50", weights=wrong)


def test_frameworks_stay_apart():
    import subprocess
    import sys

    torch_only = ("import sys, numpy as np, gradsight\n"
                  "from gradsight.adapters.torch.zoo import seed_cnn\n"
                  "gradsight.saliency(seed_cnn(), np.zeros((1, 32, 32, 1), np.float32))\n"
                  "gradsight.receptive_field(seed_cnn())\n"
                  "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    keras_only = ("import sys, numpy as np, gradsight\n"
                  "m = gradsight.load_model('keras:seed-cnn')\n"
                  "gradsight.saliency(m, np.zeros((1, 128, 128, 1), np.float32))\n"
                  "gradsight.node_gradient(m, 'L6', (0, 0, 0))\n"
                  "print('torch' in sys.modules)")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", torch_only], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "False"]
    out = subprocess.run([sys.executable, "-c", keras_only], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False"]


def test_nested_model_and_conv1d_fields():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((None, None, 2)), keras.layers.Conv2D(2, 3, padding="same", name="a"),
                              keras.layers.MaxPooling2D(2, name="pool")], name="block")
    x = keras.Input((32, 32, 1))
    stem = keras.layers.Conv2D(2, 5, strides=2, padding="valid", name="stem")(x)
    side = keras.layers.AveragePooling2D(2, name="avg")(keras.layers.Conv2D(2, 3, padding="same", name="side")(stem))
    y = keras.layers.Concatenate(name="cat")([inner(stem), side])
    model = keras.Model(x, y)
    report = gradsight.receptive_field(model)
    # stem 5/2 -> r = 5, S = 2; inner conv 3 at S=2 -> 5 + 2*2 = 9; pool 2/2 at S=2 -> 9 + 1*2 = 11, S = 4
    assert report["block.a"].size == (5 + 2 * 2,) * 2
    assert report["block"].size == (5 + 2 * 2 + 1 * 2,) * 2 and report["block"].stride == (4, 4)
    assert report["cat"].size == report["block"].size and report["cat"].aligned
    checks = gradsight.compare_fields(model, layers=["stem", "block", "cat"])
    assert len(checks) == 6 and all(c.agree for c in checks)
    seq = keras.Sequential([keras.Input((64, 1)), keras.layers.Conv1D(2, 5, dilation_rate=2, padding="causal",
                                                                       name="c1"),
                            keras.layers.Conv1D(2, 3, strides=2, name="c2")])
    c2 = gradsight.receptive_field(seq)["c2"]
    # causal dilated 5 -> k' = 2*4 + 1 = 9, left padding 8; then 3 at stride 1 -> 9 + 2 = 11, S = 2
    assert (c2.size, c2.stride, c2.padding) == ((11,), (2,), (8,))
    assert c2.rect((0,)) == ((0, 11 - 8 - 1),)


def test_bad_keras_weight_files_give_one_line_in_our_words(tmp_path, capsys):
    from gradsight.cli import main

    seed = keras_seed_cnn()
    seed.set_weights([w + 0.5 for w in seed.get_weights()])  # not the weights a fresh seed CNN has
    seed.save_weights(tmp_path / "seed.weights.h5")
    seed.save(tmp_path / "seed.keras")
    x = keras.Input((128, 128, 1))
    y = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)  # Python code inside the file
    keras.Model(x, keras_seed_cnn()(y)).save(tmp_path / "lambda.keras")
    h5, whole = (tmp_path / "seed.weights.h5").read_bytes(), (tmp_path / "seed.keras").read_bytes()
    (tmp_path / "truncated.weights.h5").write_bytes(h5[: len(h5) // 2])
    (tmp_path / "truncated.keras").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "notes.weights.h5").write_text("not weights\n")
    keras.applications.MobileNet(weights=None, input_shape=(128, 128, 3)).save_weights(tmp_path / "m.weights.h5")
    cases = {
        "lambda.keras": ["Lambda layer", "Python code", "save_weights"],
        "truncated.weights.h5": ["damaged or truncated"],
        "truncated.keras": ["damaged or truncated"],
        "notes.weights.h5": ["text file"],
        "m.weights.h5": ["another architecture"],
    }
    for name, words in cases.items():
        with pytest.raises(gradsight.BadInputError) as info:
            gradsight.load_model("keras:seed-cnn", weights=tmp_path / name)
        message = str(info.value)
        assert message.startswith(f"weights file '{tmp_path / name}': expected ") and "\n" not in message, message
        # Keras' own advice (safe_mode=False) would run the code in the file: never repeat it
        assert "safe_mode=False" not in message and "File not found" not in message, message
        for word in words:
            assert word in message, (name, word, message)
    assert main(["saliency", "--model", "keras:seed-cnn", "--weights", str(tmp_path / "lambda.keras")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    loaded = gradsight.load_model("keras:seed-cnn", weights=tmp_path / "seed.keras")
    assert loaded.spec.weights.startswith("file:")
    assert all(np.array_equal(a, b) for a, b in zip(loaded.module.get_weights(), seed.get_weights()))


KERAS_FAMILIES = ["vgg16", "vgg19", "resnet", "resnet_v2", "mobilenet", "mobilenet_v2", "mobilenet_v3", "inception_v3",
                  "inception_resnet_v2", "xception", "densenet", "nasnet", "efficientnet", "efficientnet_v2",
                  "convnext"]


@pytest.mark.parametrize("family", KERAS_FAMILIES)
def test_keras_application_preprocessing_equals_keras_own(family, ouzel_path):
    # Preprocessing belongs to the weights: each keras.applications family has its own preprocess_input
    # ("caffe" BGR minus means, "tf" x / 127.5 - 1, "torch" ImageNet mean/std, or none: the model rescales).
    from gradsight.adapters.keras.models import application_preprocess

    ours = application_preprocess(family, (299, 299))
    image = keras.utils.load_img(ouzel_path, target_size=(299, 299))
    expected = getattr(keras.applications, family).preprocess_input(keras.utils.img_to_array(image)[None])[0]
    np.testing.assert_allclose(ours(gradsight.load_image(ouzel_path)), expected, rtol=1e-5, atol=1e-4)


def test_every_keras_application_has_its_preprocessing_and_input_size(tmp_path):
    import inspect

    from gradsight.adapters.keras.models import application_preprocess

    keys = []
    for name in dir(keras.applications):
        factory = getattr(keras.applications, name)
        if name[:1].isupper() and callable(factory):
            family = inspect.getmodule(factory).__name__.rsplit(".", 1)[-1]
            assert application_preprocess(family, (224, 224)).input_size == (224, 224), name
            keys.append(name.lower().replace("_", "").replace("-", ""))  # how keras:NAME is matched
    assert len(keys) == len(set(keys)) > 30  # one keras:NAME, one application
    model = keras.applications.MobileNet(weights=None)
    model.save_weights(tmp_path / "mobilenet.weights.h5")
    loaded = gradsight.load_model("keras:mobilenet", weights=tmp_path / "mobilenet.weights.h5")
    assert loaded.preprocess == application_preprocess("mobilenet", (224, 224))
    assert (loaded.preprocess.mean, loaded.preprocess.std) == ((0.5,) * 3, (0.5,) * 3)  # x / 127.5 - 1
