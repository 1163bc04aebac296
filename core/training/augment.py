"""Per-image random augmentation as the study (scaling, flips, crop, translation; each with probability p), batched.

`torchvision.transforms.v2` applied to a batch draws one set of parameters for the whole
batch; the study augments each image independently. Here every image gets its own draw and
all of them are applied in one `grid_sample` on the run's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSpec:
    prob: float = 0.5  # each transform is applied to an image with this probability
    scale: float = 0.1  # zoom factor drawn from [1 - scale, 1 + scale]
    crop: float = 0.8  # a crop keeps a fraction in [crop, 1] of the side, resized back
    translate: float = 0.1  # shift by up to this fraction of the side, in x and y


def sample_params(n: int, spec: AugmentSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw per-image parameters on the CPU (so results do not depend on the device).

    Returns tensors of shape (n,) or (n, 2): hflip, vflip (bool), scale (float, 1 = none),
    crop (kept fraction, 1 = none), crop_offset (n, 2) and shift (n, 2) in fractions of the side.
    """

    def coin() -> torch.Tensor:
        return torch.rand(n, generator=generator) < spec.prob

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=generator)

    hflip, vflip = coin(), coin()
    do_scale, do_crop, do_shift = coin(), coin(), coin()
    scale = torch.where(do_scale, uniform(1 - spec.scale, 1 + spec.scale), torch.ones(n))
    crop = torch.where(do_crop, uniform(spec.crop, 1.0), torch.ones(n))
    # Crop window centre: anywhere that keeps the window inside the image.
    crop_offset = (uniform(-1.0, 1.0, 2) * (1 - crop)[:, None]) * do_crop[:, None]
    shift = uniform(-spec.translate, spec.translate, 2) * do_shift[:, None]
    return {"hflip": hflip, "vflip": vflip, "scale": scale, "crop": crop, "crop_offset": crop_offset, "shift": shift}


def affine_matrices(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """(n, 2, 3) matrices mapping output to input coordinates in [-1, 1], for `F.affine_grid`.

    in = (crop / scale) * flip(out) + crop_offset - 2 * shift
    """
    n = params["scale"].shape[0]
    flip = torch.stack([1 - 2 * params["hflip"].float(), 1 - 2 * params["vflip"].float()], dim=1)  # (n, 2)
    diag = (params["crop"] / params["scale"])[:, None] * flip
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = diag[:, 0]
    theta[:, 1, 1] = diag[:, 1]
    theta[:, :, 2] = params["crop_offset"] - 2 * params["shift"]
    return theta


def augment_batch(images: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Augment a float batch (n, c, h, w); regions moved in from outside the image are filled with 0 (black)."""
    return warp(images, affine_matrices(sample_params(images.shape[0], spec, generator)))


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply one (2, 3) matrix per image: (n, c, h, w) and (n, 2, 3) -> (n, c, h, w), in one `grid_sample`.

    Folds trained together (core/training/foldstack.py) draw their matrices from their own generators and
    warp all their images in this one call.
    """
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
