"""Generated images: one sampling path for every generative task (DDPM, DCGAN), the samples file
format, and judging them (FID in a classifier's feature space, conditional accuracy)."""
from cnnkit.generation.samples import read_samples, save_samples, to_uint8

__all__ = ["read_samples", "save_samples", "to_uint8"]
