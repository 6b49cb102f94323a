"""Named Keras models: the seed CNN and keras.applications classifiers, offline first.

Example:
    >>> model = load_keras_model("keras:seed-cnn")                          # doctest: +SKIP
    >>> [layer.name for layer in model.module.layers][1:7]                  # doctest: +SKIP
    ['L1', 'L2', 'L3', 'L4', 'L5', 'L6']

Weights never download unless asked; ``weights=FILE`` reads ``.weights.h5``/``.h5`` weights into the
architecture, or a whole ``.keras`` model with ``safe_mode=True`` (no arbitrary code is run).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..errors import BadInputError, MissingDependencyError, UnknownNameError, WeightsUnavailableError
from ..models.spec import LoadedModel, ModelSpec
from ..preprocess import Preprocess

SEED_KERNELS = (5, 5, 3, 3, 3, 3)
SEED_STRIDES = (1, 2, 1, 2, 1, 2)
SEED_CHANNELS = (16, 16, 32, 32, 64, 64)
SEED_INPUT = (1, 128, 128)

#: keras.applications.resnet.preprocess_input ("caffe"): RGB -> BGR, minus the ImageNet means, no scaling;
#: the exercise loads photos with keras.utils.load_img(target_size=(224, 224)): a plain nearest resize.
CAFFE = Preprocess(resize=(224, 224), crop=None, interpolation="nearest", mean=(103.939, 116.779, 123.68),
                   std=(1.0, 1.0, 1.0), pixel_max=1.0, channel_order="BGR")
RESNET50_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from . import avoid_triton_tensorflow_clash

    avoid_triton_tensorflow_clash("tensorflow")
    try:
        import keras
    except ImportError as err:
        raise MissingDependencyError("Keras models need the extra: pip install 'gradsight[keras]'") from err
    return keras


def keras_seed_cnn(seed: int = 0, classes: int = 10):
    """The exercise's CNN in Keras: Conv2D(padding='same', activation='relu') L1..L6, global average pooling,
    Dense softmax. Glorot-uniform kernels seeded from ``seed``, zero biases (Keras' defaults)."""
    keras = _keras()
    inputs = keras.Input(shape=(SEED_INPUT[1], SEED_INPUT[2], SEED_INPUT[0]), name="image")
    x = inputs
    for i, (k, s, c) in enumerate(zip(SEED_KERNELS, SEED_STRIDES, SEED_CHANNELS), start=1):
        x = keras.layers.Conv2D(c, k, strides=s, padding="same", activation="relu", name=f"L{i}",
                                kernel_initializer=keras.initializers.GlorotUniform(seed=seed * 100 + i))(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="dense",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed=seed * 100 + 7))(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def copy_seed_weights(torch_net, keras_model) -> None:
    """Give a Keras seed CNN the weights of a PyTorch one (OIHW kernels become HWIO)."""
    for i in range(1, 7):
        conv = getattr(torch_net, f"L{i}").conv
        keras_model.get_layer(f"L{i}").set_weights([conv.weight.detach().permute(2, 3, 1, 0).numpy(),
                                                     conv.bias.detach().numpy()])
    dense = torch_net.head.dense
    keras_model.get_layer("dense").set_weights([dense.weight.detach().T.numpy(), dense.bias.detach().numpy()])


def _load_weights(model, path: Path):
    what = f"weights file {str(path)!r}"
    if not path.is_file():
        raise WeightsUnavailableError(f"{what}: expected an existing file, got none there. Check the path.")
    try:
        with warnings.catch_warnings():
            # Keras 3.15 warns about containers it then loads correctly (the tests compare the weights).
            warnings.filterwarnings("ignore", message="Skipping nested container")
            _read_weights(model, path)
    except Exception as err:  # any unreadable or mismatched file is the same user error
        raise BadInputError(what, expected=f"weights of the {model.name} architecture (.weights.h5, .h5 or a "
                            f"safe .keras file)", got=f"{type(err).__name__}: {str(err).splitlines()[0][:160]}",
                            fix="pass weights saved from the same architecture") from None


def _read_weights(model, path: Path) -> None:
    keras = _keras()
    if path.suffix == ".keras":
        loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
        model.set_weights(loaded.get_weights())
    else:
        model.load_weights(path)


def _keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def _names_for(classes: int):
    if classes != 1000:
        return None
    try:
        from ..models.imagenet import imagenet_class_names

        return imagenet_class_names()
    except MissingDependencyError:
        return None


def load_keras_model(name: str, *, weights: str | Path | None = None, download: bool = False,
                     architecture_only: bool = False) -> LoadedModel:
    """``keras:seed-cnn``, ``keras:resnet50`` (with its "caffe" preprocessing) or ``keras:NAME`` of
    keras.applications. ``architecture_only`` skips weights (enough for receptive fields)."""
    keras = _keras()
    base = name.split(":", 1)[1] if ":" in name else name
    if base == "seed-cnn":
        model = keras_seed_cnn()
        if weights is not None:
            _load_weights(model, Path(weights))
        prep = Preprocess(resize=None, crop=None, mean=(0.0,), std=(1.0,))
        return LoadedModel(model, ModelSpec(name, "keras", prep, None, "random (seeded)", SEED_INPUT))
    apps = {n.lower(): getattr(keras.applications, n) for n in dir(keras.applications)
            if n[:1].isupper() and callable(getattr(keras.applications, n))}
    key = base.lower().replace("_", "").replace("-", "")
    if key not in apps:
        raise UnknownNameError("Keras application", base, ["seed-cnn", *apps])
    model = apps[key](weights=None)
    source = "random (architecture only)"
    if not architecture_only:
        if weights is not None:
            _load_weights(model, Path(weights))
            source = f"file: {weights}"
        elif key == "resnet50" and (_keras_home() / "models" / RESNET50_FILE).is_file():
            _load_weights(model, _keras_home() / "models" / RESNET50_FILE)
            source = f"Keras cache: {_keras_home() / 'models' / RESNET50_FILE}"
        elif download:
            try:
                model = apps[key](weights="imagenet")
            except Exception as err:  # network errors come in many types; all mean "not fetched"
                raise WeightsUnavailableError(
                    f"{name}: could not download its ImageNet weights ({type(err).__name__}). You seem to be "
                    f"offline: pass --weights FILE (a .weights.h5 or .keras file).") from None
            source = "downloaded: imagenet"
        else:
            where = _keras_home() / "models" / RESNET50_FILE if key == "resnet50" else "the Keras cache"
            raise WeightsUnavailableError(
                f"{name}: expected its ImageNet weights in {where}, got no file there. Pass --weights FILE "
                f"(.weights.h5, .h5 or .keras), or --download to fetch them (needs network).")
    classes = model.outputs[0].shape[-1]
    prep = CAFFE if key.startswith("resnet") and "v2" not in key else Preprocess(
        resize=(224, 224), crop=None, interpolation="nearest")
    shape = tuple(model.inputs[0].shape)
    input_shape = (shape[-1], *(n or 224 for n in shape[1:-1]))
    return LoadedModel(model, ModelSpec(name, "keras", prep, _names_for(classes), source, input_shape))
