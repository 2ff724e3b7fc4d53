"""Single-device network definitions and their loading; nothing here knows about DDP."""

from cyclegan.models.discriminator import NLayerDiscriminator
from cyclegan.models.generator import GeneratorSpec, ResnetGenerator
from cyclegan.models.loading import export_generator, load_generator, read_state_dict

__all__ = [
    "GeneratorSpec",
    "NLayerDiscriminator",
    "ResnetGenerator",
    "export_generator",
    "load_generator",
    "read_state_dict",
]
