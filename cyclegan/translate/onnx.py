"""An exported ONNX generator run by onnxruntime (on the CPU), standing in for the PyTorch one:
translation and the Python API take either. The graph takes heights and widths that are
multiples of 4; other sizes are reflection-padded and cropped back here, as for PyTorch."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cyclegan.errors import CheckpointError
from cyclegan.io.records import parse_json
from cyclegan.models.generator import GeneratorSpec
from cyclegan.models.loading import generator_spec


class OnnxGenerator(nn.Module):
    def __init__(self, path: Path) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError:
            raise CheckpointError(f"{path} is an ONNX model: install onnxruntime (pip install -e .[export])") from None
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime reports a damaged file in several classes
            raise CheckpointError(f"{path} is not a readable ONNX model ({str(err).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        where = f"{path} (its cyclegan.generator metadata)"
        self.spec = generator_spec(parse_json(meta["cyclegan.generator"], where, error=CheckpointError), where) \
            if "cyclegan.generator" in meta else GeneratorSpec()
        self.direction = meta.get("cyclegan.direction")
        self.input = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] NCHW of any size -> translated [-1, 1] NCHW of the same size."""
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % 4, -width % 4
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), mode="reflect")
        out = self.session.run(None, {self.input: images.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out)[..., :height, :width].to(images.device)
