"""The model names gradsight knows by itself, and the seed CNN's architecture shared by both frameworks' zoos.

Example:
    >>> DEFAULT_MODEL in CURATED
    True
    >>> list(zip(SEED_KERNELS, SEED_STRIDES))[:2]       # L1 and L2: (kernel, stride)
    [(5, 1), (5, 2)]

More names come from torchvision, timm and Keras by prefixed name (see ``registry``).
"""

#: Named models with bundled specs (the first is the embedded default, which needs no download).
CURATED = ("efficientnet_lite0", "resnet50")
#: The exercise's CNN in TF 'same' padding and in PyTorch's symmetric padding.
SEED_NETWORKS = ("seed-cnn", "seed-cnn-torch")
DEFAULT_MODEL = "efficientnet_lite0"

# The seed CNN, written once for adapters/torch/zoo.py and adapters/keras/zoo.py (the contract test compares
# the two builds number for number): layers L1..L6 are conv + ReLU with these kernels, strides and channels.
SEED_KERNELS = (5, 5, 3, 3, 3, 3)
SEED_STRIDES = (1, 2, 1, 2, 1, 2)
SEED_CHANNELS = (16, 16, 32, 32, 64, 64)
SEED_INPUT = (1, 128, 128)  # (channels, rows, cols)
