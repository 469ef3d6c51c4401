"""cnnkit: from the convolution formula to trained, exported, explained convolutional networks."""

__version__ = "0.1.0"
