"""Named Keras models: the seed CNN, the embedded EfficientNet-Lite0 converted, and keras.applications
classifiers, offline first.

Example:
    >>> model = load_keras_model("keras:seed-cnn")                          # doctest: +SKIP
    >>> [layer.name for layer in model.module.layers][1:7]                  # doctest: +SKIP
    ['L1', 'L2', 'L3', 'L4', 'L5', 'L6']

Weights never download unless asked; ``weights=FILE`` reads ``.weights.h5``/``.h5`` weights into the
architecture, or a whole ``.keras`` model with ``safe_mode=True`` (no arbitrary code is run).
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path

from ...errors import BadInputError, MissingDependencyError, UnknownNameError, WeightsUnavailableError
from ...models.names import SEED_INPUT
from ...models.spec import LoadedModel, ModelSpec, plain_preprocess
from ...preprocess import Preprocess
from .backend import import_keras

# copy_seed_weights lives in zoo.py; it is re-exported here for the importers that still reach it here
# (tests/adapters, tests/methods, tests/evaluation, bench, tools): point them at .zoo, then drop it.
from .zoo import copy_seed_weights, keras_seed_cnn  # noqa: F401

#: keras.applications.resnet.preprocess_input ("caffe"): RGB -> BGR, minus the ImageNet means, no scaling;
#: the exercise loads photos with keras.utils.load_img(target_size=(224, 224)): a plain nearest resize.
CAFFE = Preprocess(resize=(224, 224), crop=None, interpolation="nearest", mean=(103.939, 116.779, 123.68),
                   std=(1.0, 1.0, 1.0), pixel_max=1.0, channel_order="BGR")
RESNET50_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"

#: The ``preprocess_input`` mode of each keras.applications family (module): "caffe" (BGR minus the ImageNet
#: means), "tf" (x / 127.5 - 1), "torch" (x / 255, ImageNet mean/std) or "none" (the model rescales itself).
_FAMILY_MODES = {
    "vgg16": "caffe", "vgg19": "caffe", "resnet": "caffe", "resnet50": "caffe",
    "resnet_v2": "tf", "mobilenet": "tf", "mobilenet_v2": "tf", "inception_v3": "tf", "inception_resnet_v2": "tf",
    "xception": "tf", "nasnet": "tf",
    "densenet": "torch",
    "mobilenet_v3": "none", "efficientnet": "none", "efficientnet_v2": "none", "convnext": "none", "regnet": "none",
}


def application_preprocess(family: str, size: tuple[int, int]) -> Preprocess:
    """What ``keras.applications.<family>.preprocess_input`` does, after ``keras.utils.load_img(target_size=size)``
    (a plain nearest resize), as a gradsight Preprocess.

    Example:
        >>> application_preprocess("mobilenet", (224, 224)).mean    # x / 127.5 - 1 = (x / 255 - 0.5) / 0.5
        (0.5, 0.5, 0.5)
    """
    mode = _FAMILY_MODES.get(family)
    if mode is None:
        raise BadInputError(f"keras.applications.{family}", expected="a family whose preprocessing gradsight knows "
                            f"({', '.join(sorted(_FAMILY_MODES))})", got=repr(family),
                            fix="build the model yourself and pass it with preprocess=Preprocess(...)")
    size = tuple(int(n) for n in size)
    if mode == "caffe":
        return Preprocess(resize=size, crop=None, interpolation="nearest", mean=CAFFE.mean, std=CAFFE.std,
                          pixel_max=1.0, channel_order="BGR")
    if mode == "tf":
        return Preprocess(resize=size, crop=None, interpolation="nearest", mean=(0.5,) * 3, std=(0.5,) * 3)
    if mode == "torch":
        return Preprocess(resize=size, crop=None, interpolation="nearest")
    return Preprocess(resize=size, crop=None, interpolation="nearest", mean=(0.0,) * 3, std=(1.0,) * 3,
                      pixel_max=1.0)


def _load_weights(model, path: Path):
    what = f"weights file {str(path)!r}"
    if not path.is_file():
        raise WeightsUnavailableError(f"{what}: expected an existing file, got none there. Check the path.")
    try:
        with warnings.catch_warnings():
            # Keras 3.15 warns about containers it then loads correctly (the tests compare the weights).
            warnings.filterwarnings("ignore", message="Skipping nested container")
            _read_weights(model, path)
    except Exception as err:  # any unreadable or mismatched file is the same user error, said in our words
        got, fix = _unreadable(path, err)
        raise BadInputError(what, expected=f"weights of the {model.name} architecture (.weights.h5, .h5 or a "
                            f"safe .keras file)", got=got, fix=fix) from None


_SAME = "pass weights saved from the same architecture (model.save_weights('name.weights.h5'))"


def _unreadable(path: Path, err: Exception) -> tuple[str, str]:
    """(what the file is, what to do), in one line of our words: Keras' messages span lines, and for a Lambda
    layer they suggest ``safe_mode=False``, which would run the code stored in the file."""
    text = " ".join(str(err).split())
    with open(path, "rb") as file:
        head = file.read(512)
    if "Lambda" in text and ("safe_mode" in text or "arbitrary code" in text):
        return ("a .keras file with a Lambda layer that holds Python code (not run: files are read in safe mode)",
                "save the weights alone with model.save_weights('name.weights.h5') and pass that file")
    if "Could not locate" in text or "Unknown layer" in text:
        return ("a .keras file with a custom class gradsight cannot rebuild without running its code",
                "save the weights alone with model.save_weights('name.weights.h5') and pass that file")
    is_hdf5, is_zip = head.startswith(b"\x89HDF\r\n\x1a\n"), head.startswith(b"PK\x03\x04")
    if not head:
        return "an empty file", _SAME
    if not (is_hdf5 or is_zip):
        kind = "a text file" if b"\x00" not in head and _decodes(head) else "a file in an unknown format"
        return f"{kind} (not HDF5 as .weights.h5/.h5 files are, nor a .keras zip)", _SAME
    if "truncated" in text or "File not found" in text or "zip" in text.lower() or "signature" in text:
        return "a damaged or truncated file", _SAME
    first = text[:160] + ("..." if len(text) > 160 else "")
    return f"weights of another architecture ({type(err).__name__}: {first})", _SAME


def _decodes(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start >= len(head) - 3  # only a multi-byte character cut off at the end
    return True


def _read_weights(model, path: Path) -> None:
    keras = import_keras()
    if path.suffix == ".keras":
        loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
        model.set_weights(loaded.get_weights())
    else:
        model.load_weights(path)


def load_weights_into(model, weights: str | Path) -> None:
    """Load ``.weights.h5``/``.h5`` weights, or the weights of a safe ``.keras`` file, into ``model``."""
    _load_weights(model, Path(weights))


def factory_spec(model, path: str) -> ModelSpec:
    """The spec of a Keras model a ``package.module:factory`` returned."""
    try:
        shape = tuple(model.inputs[0].shape)
        input_shape = (shape[-1], *(n or 224 for n in shape[1:-1]))
    except (AttributeError, ValueError, IndexError):  # subclassed: refused later, by what needs the graph
        input_shape = None
    return ModelSpec(path, "keras", Preprocess(resize=None, crop=None), None, "from the factory", input_shape)


def _keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def _names_for(classes: int):
    if classes != 1000:
        return None
    try:
        from ...models.imagenet import imagenet_class_names

        return imagenet_class_names()
    except MissingDependencyError:
        return None


def load_keras_model(name: str, *, weights: str | Path | None = None, download: bool = False,
                     architecture_only: bool = False) -> LoadedModel:
    """``keras:seed-cnn``, ``keras:efficientnet_lite0`` (the embedded model converted, see twin.py; its
    ``weights`` are a PyTorch state dict of tf_efficientnet_lite0, read before the conversion),
    ``keras:resnet50`` (with its "caffe" preprocessing) or ``keras:NAME`` of keras.applications.
    ``architecture_only`` skips weights (enough for receptive fields)."""
    keras = import_keras()
    base = name.split(":", 1)[1] if ":" in name else name
    if base == "seed-cnn":
        model = keras_seed_cnn()
        source = "random (seeded)"
        if weights is not None and not architecture_only:
            _load_weights(model, Path(weights))
            source = f"file: {weights}"
        prep = plain_preprocess(SEED_INPUT[0])
        return LoadedModel(model, ModelSpec(name, "keras", prep, None, source, SEED_INPUT))
    if base == "efficientnet_lite0":  # the embedded model, converted: offline, with its real weights
        from ..torch.models import load_torch_model
        from .twin import efficientnet_lite0_as_keras

        source = load_torch_model(base, weights=weights, architecture_only=architecture_only)
        spec = source.spec
        return LoadedModel(efficientnet_lite0_as_keras(source.module), ModelSpec(
            name, "keras", spec.preprocess, spec.class_names, f"{spec.weights}, converted to Keras", spec.input_shape))
    apps = {n.lower(): getattr(keras.applications, n) for n in dir(keras.applications)
            if n[:1].isupper() and callable(getattr(keras.applications, n))}
    key = base.lower().replace("_", "").replace("-", "")
    if key not in apps:
        raise UnknownNameError("Keras application", base, ["seed-cnn", "efficientnet_lite0", *apps])
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
    shape = tuple(model.inputs[0].shape)
    input_shape = (shape[-1], *(n or 224 for n in shape[1:-1]))
    family = inspect.getmodule(apps[key]).__name__.rsplit(".", 1)[-1]
    # The weights' own preprocessing, at the model's own input size (InceptionV3: 299, NASNetLarge: 331, ...)
    prep = application_preprocess(family, input_shape[1:])
    return LoadedModel(model, ModelSpec(name, "keras", prep, _names_for(classes), source, input_shape))
