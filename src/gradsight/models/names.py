"""The model names gradsight knows by itself; more come from torchvision, timm and Keras by prefixed name.

Example:
    >>> DEFAULT_MODEL in CURATED
    True
"""

#: Named models with bundled specs (the first is the embedded default, which needs no download).
CURATED = ("efficientnet_lite0", "resnet50")
#: The exercise's CNN in TF 'same' padding and in PyTorch's symmetric padding.
SEED_NETWORKS = ("seed-cnn", "seed-cnn-torch")
DEFAULT_MODEL = "efficientnet_lite0"
