"""Differentiable augmentation for the discriminators (DiffAugment, Zhao et al. 2020).

With a few hundred images a discriminator memorises the training set and its gradients stop
teaching the generators anything. DiffAugment transforms every image a discriminator sees, real
and fake, in the discriminator's step and in the generators' adversarial term, with the same
family of random, differentiable transforms, so that gradients still flow to the generators:

- `color`: brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) around the pixel's grey), contrast
  (x U(0.5, 1.5) around the image's mean), on [-1, 1] images;
- `translation`: a shift by up to 1/8 of the size, zero filled;
- `cutout`: a square of half the size set to zero.

Each image gets each transform with probability `p` (p = 0 is exactly the identity). The draws
come from a generator of its own, seeded per rank and saved in checkpoints: runs are
reproducible and resume exactly.
"""

from __future__ import annotations

import torch



class DiffAugment:
    def __init__(self, policy: str, p: float, seed: int) -> None:
        self.ops = [op for op in (s.strip() for s in policy.split(",")) if op]
        self.p = p
        self.generator = torch.Generator().manual_seed(seed)

    def __bool__(self) -> bool:
        return bool(self.ops) and self.p > 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self:
            return images
        for op in self.ops:
            images = getattr(self, op)(images)
        return images

    def _uniform(self, n: int, *shape: int, device: torch.device) -> torch.Tensor:
        return torch.rand((n, *shape), generator=self.generator).to(device)

    def _chosen(self, images: torch.Tensor) -> torch.Tensor:
        """1 for the images this transform applies to (probability p), as N x 1 x 1 x 1."""
        return (self._uniform(len(images), 1, 1, 1, device=images.device) < self.p).to(images.dtype)

    def color(self, x: torch.Tensor) -> torch.Tensor:
        n, device = len(x), x.device
        out = x + (self._uniform(n, 1, 1, 1, device=device) - 0.5)
        grey = out.mean(dim=1, keepdim=True)
        out = (out - grey) * (self._uniform(n, 1, 1, 1, device=device) * 2) + grey
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * (self._uniform(n, 1, 1, 1, device=device) + 0.5) + mean
        chosen = self._chosen(x)
        return chosen * out + (1 - chosen) * x

    def translation(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        shift = ((self._uniform(n, 2, device=x.device) * 2 - 1) * torch.tensor([h, w], device=x.device) / 8).round()
        shift = shift * self._chosen(x).view(n, 1)
        rows = (torch.arange(h, device=x.device).view(1, h, 1) - shift[:, 0].view(n, 1, 1)).long()
        cols = (torch.arange(w, device=x.device).view(1, 1, w) - shift[:, 1].view(n, 1, 1)).long()
        inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1).to(x.dtype)
        index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w).expand(-1, x.shape[1], -1)
        return x.flatten(2).gather(2, index).view_as(x) * inside

    def cutout(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        size_h, size_w = h // 2, w // 2
        centre = self._uniform(n, 2, device=x.device) * torch.tensor([h, w], device=x.device)
        rows, cols = torch.arange(h, device=x.device).view(1, h, 1), torch.arange(w, device=x.device).view(1, 1, w)
        top, left = (centre[:, 0] - size_h / 2).view(n, 1, 1), (centre[:, 1] - size_w / 2).view(n, 1, 1)
        hole = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
        hole = hole.unsqueeze(1).to(x.dtype) * self._chosen(x)
        return x * (1 - hole)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
