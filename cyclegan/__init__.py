"""CycleGAN (Zhu et al. 2017) trained at cluster scale."""

__version__ = "0.1.0"
