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
    """`policy` ("color,translation,cutout", any subset, in that order) applied to every batch
    passed in; the identity when the policy is empty or `p` is 0. On greyscale images "color"
    changes brightness and contrast only (a grey pixel has no saturation). Random draws happen
    on the images' device, so nothing waits on the host."""

    def __init__(self, policy: str, p: float, seed: int, device: torch.device = torch.device("cpu")) -> None:
        self.ops = [op for op in (s.strip() for s in policy.split(",")) if op]
        if len(set(self.ops)) < len(self.ops):
            raise ValueError(f"train.diffaug names a transform twice: {policy}")
        self.p = p
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __bool__(self) -> bool:
        return bool(self.ops) and self.p > 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self:
            return images
        for op in self.ops:
            images = getattr(self, op)(images)
        return images

    def _uniform(self, n: int, *shape: int, like: torch.Tensor) -> torch.Tensor:
        """Draws in at least fp32: under autocast the fakes arrive in bf16/fp16, and their dice must
        be those of the real images, not ones rounded to a few hundred values."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        return torch.rand((n, *shape), generator=self.generator, device=like.device, dtype=dtype)

    def _chosen(self, images: torch.Tensor) -> torch.Tensor:
        """1 for the images this transform applies to (probability p), as N x 1 x 1 x 1."""
        return (self._uniform(len(images), 1, 1, 1, like=images) < self.p).to(images.dtype)

    def color(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        out = x + (self._uniform(n, 1, 1, 1, like=x) - 0.5)
        grey = out.mean(dim=1, keepdim=True)
        out = (out - grey) * (self._uniform(n, 1, 1, 1, like=x) * 2) + grey
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * (self._uniform(n, 1, 1, 1, like=x) + 0.5) + mean
        chosen = self._chosen(x)
        return (chosen * out + (1 - chosen) * x).to(x.dtype)

    def translation(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        draws, chosen = self._uniform(n, 2, like=x), self._chosen(x).view(n)
        # whole pixels, up to an eighth of the size either way (Python numbers: no copy to the device)
        shift_y = ((draws[:, 0] * (2 * (h // 8) + 1)).floor() - h // 8) * chosen
        shift_x = ((draws[:, 1] * (2 * (w // 8) + 1)).floor() - w // 8) * chosen
        rows = torch.arange(h, device=x.device).view(1, h, 1) - shift_y.view(n, 1, 1).long()
        cols = torch.arange(w, device=x.device).view(1, 1, w) - shift_x.view(n, 1, 1).long()
        inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1).to(x.dtype)
        index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w).expand(-1, x.shape[1], -1)
        return x.flatten(2).gather(2, index).view_as(x) * inside

    def cutout(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        draws = self._uniform(n, 2, like=x)
        centre_y, centre_x = draws[:, 0] * h, draws[:, 1] * w
        rows, cols = torch.arange(h, device=x.device).view(1, h, 1), torch.arange(w, device=x.device).view(1, 1, w)
        top, left = (centre_y - h // 4).view(n, 1, 1), (centre_x - w // 4).view(n, 1, 1)
        hole = (rows >= top) & (rows < top + h // 2) & (cols >= left) & (cols < left + w // 2)
        return x * (1 - hole.unsqueeze(1).to(x.dtype) * self._chosen(x))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
