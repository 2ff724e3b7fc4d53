"""Translation with a trained or official generator: image files and folders, tar shards (split
across ranks, resumable) and videos, all through one batched core, with exact tiling for
images too big to translate whole."""

from cyclegan.translate.core import TranslateReport, Translator, pick_device, use_bf16
from cyclegan.translate.run import run

__all__ = ["TranslateReport", "Translator", "pick_device", "run", "use_bf16"]
