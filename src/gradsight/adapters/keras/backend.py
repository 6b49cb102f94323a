"""Importing Keras on the TensorFlow backend, only when a Keras model is asked for.

Example:
    >>> keras = import_keras()          # doctest: +SKIP
    >>> keras.backend.backend()         # doctest: +SKIP
    'tensorflow'

``import gradsight`` imports no framework; the modules that name a Keras model by string (``models.py``,
``zoo.py``) call this first, so that the backend and the TensorFlow/Triton clash are settled before Keras loads.
"""

from __future__ import annotations

import os

from ...errors import MissingDependencyError
from ..common import avoid_triton_tensorflow_clash


def import_keras():
    """The ``keras`` module, on TensorFlow unless the user chose a backend; one clear error without the extra."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    avoid_triton_tensorflow_clash("tensorflow")
    try:
        import keras
    except ImportError as err:
        raise MissingDependencyError("Keras models need the extra: pip install 'gradsight[keras]'") from err
    return keras
