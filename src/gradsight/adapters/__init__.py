"""Framework adapters, found from the model's type without importing any framework eagerly.

Example:
    >>> import torch                                    # doctest: +SKIP
    >>> adapter_for(torch.nn.Linear(2, 2)).name         # doctest: +SKIP
    'torch'

A framework counts as present only when the user's program has already imported it (``sys.modules``):
if a model is a ``torch.nn.Module``, torch is necessarily loaded.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import BadInputError


def adapter_for(model: Any):
    """The adapter that can compute gradients through ``model``."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        from .torch import TorchAdapter

        return TorchAdapter()
    raise BadInputError("model", expected="a torch.nn.Module or a model name such as 'efficientnet_lite0'",
                        got=f"an object of type {type(model).__module__}.{type(model).__qualname__}",
                        fix="pass a PyTorch classifier, or see `gradsight saliency --help` for names")


def is_framework_tensor(value: Any) -> bool:
    """True for a torch tensor (so it is read as model input, not as a photo)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)
