"""The history of generated images shown to the discriminators (Shrivastava et al. 2017).

Each pool has its own `torch.Generator`, so its choices do not disturb the global RNG, and
`state_dict` holds the stored images and that generator: a resumed run draws the same.
"""

from __future__ import annotations

import torch


class ImagePool:
    """Until full, store and return each new image; then, with probability 1/2, return a
    stored image and keep the new one in its place (the official query rule)."""

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        # a non-finite fake (from a step that will be skipped) must not stay in the history
        for image in torch.nan_to_num(images.detach(), nan=0.0, posinf=1.0, neginf=-1.0):
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.generator).item() > 0.5:
                index = int(torch.randint(0, self.size, (), generator=self.generator))
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        return {
            "size": self.size,
            "images": [image.cpu() for image in self.images],
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size:
            raise ValueError(f"pool of size {state['size']} cannot be loaded into a pool of size {self.size}")
        self.images = list(state["images"])
        self.generator.set_state(state["generator"])

    def to(self, device: torch.device) -> "ImagePool":
        self.images = [image.to(device) for image in self.images]
        return self
