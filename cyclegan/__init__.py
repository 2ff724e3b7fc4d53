"""CycleGAN (Zhu et al. 2017) trained at cluster scale.

    from cyclegan import Translator
    translator = Translator.from_pretrained("runs/h2z/export", direction="AtoB")
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`Translator` is imported on first use: `import cyclegan` stays light."""
    if name == "Translator":
        from cyclegan.translate.core import Translator

        return Translator
    raise AttributeError(f"module 'cyclegan' has no attribute {name!r}")
