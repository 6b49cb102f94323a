"""Which adapter serves a model: found from the model's type, without importing any framework eagerly.

Example:
    >>> import torch                                    # doctest: +SKIP
    >>> adapter_for(torch.nn.Linear(2, 2)).name         # doctest: +SKIP
    'torch'

A framework counts as present only when the user's program has already imported it (``sys.modules``):
if a model is a ``torch.nn.Module`` (or a ``keras.Model``), that framework is necessarily loaded.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import BadInputError
from .common import avoid_triton_tensorflow_clash


def adapter_for(model: Any):
    """The adapter that can compute gradients through ``model``."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        avoid_triton_tensorflow_clash("torch")
        from .torch.adapter import TorchAdapter

        return TorchAdapter()
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(model, keras.Model):
        avoid_triton_tensorflow_clash("tensorflow")
        from .keras.adapter import KerasAdapter

        return KerasAdapter()
    raise BadInputError("model", expected="a torch.nn.Module, a keras.Model or a model name such as "
                        "'efficientnet_lite0'",
                        got=f"an object of type {type(model).__module__}.{type(model).__qualname__}",
                        fix="pass a PyTorch classifier, or see `gradsight saliency --help` for names")


def is_framework_tensor(value: Any) -> bool:
    """True for a torch or TensorFlow tensor (so it is read as model input, not as a photo)."""
    torch = sys.modules.get("torch")
    tf = sys.modules.get("tensorflow")
    return (torch is not None and isinstance(value, torch.Tensor)) or (
        tf is not None and isinstance(value, (tf.Tensor, tf.Variable)))


def tensor_to_array(value: Any):
    """A framework tensor as a float32 NHWC array: torch tensors are NCHW, TensorFlow tensors already NHWC."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        from .torch.gradients import to_input_array

        return to_input_array(value)
    import numpy as np

    array = np.array(value, dtype=np.float32)
    return array[None] if array.ndim == 3 else array
