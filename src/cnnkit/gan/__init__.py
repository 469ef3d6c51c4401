"""DCGAN: generator, discriminator and their adversarial training loop (Radford et al. 2016)."""
from cnnkit.gan.dcgan import Discriminator, Generator, generate, to_uint8

__all__ = ["Generator", "Discriminator", "generate", "to_uint8"]
