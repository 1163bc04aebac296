"""Heat-map overlays for the gallery: numpy and Pillow only, so pages can draw them without loading torch."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Anchors of matplotlib's "viridis" (perceptually uniform, readable with colour-vision deficiencies).
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)


def colormap(values01: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 viridis colours."""
    v = np.clip(values01, 0, 1) * (len(_VIRIDIS) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_VIRIDIS) - 1)
    t = (v - lo)[..., None]
    return ((1 - t) * _VIRIDIS[lo] + t * _VIRIDIS[hi]).astype(np.uint8)


_LUT = colormap(np.arange(256) / 255.0)  # every uint8 level's colour: a gallery of 24 overlays looks up, not interpolates


def overlay(gray_u8: np.ndarray, cam_u8: np.ndarray, *, opacity: float = 0.45) -> np.ndarray:
    """Blend a heat map (any size, uint8) over a grayscale image; the map is resized to the image with bilinear filtering."""
    size = gray_u8.shape[::-1]
    cam = np.asarray(Image.fromarray(cam_u8).resize(size, Image.BILINEAR), dtype=np.uint8)
    base = gray_u8[..., None].astype(np.float32)
    return np.clip((1 - opacity) * base + opacity * _LUT[cam].astype(np.float32), 0, 255).astype(np.uint8)


def colour_bar(width: int = 256, height: int = 14) -> np.ndarray:
    """The overlays' colour scale as an image (height, width, 3): low relevance on the left, high on the right."""
    return np.repeat(_LUT[np.linspace(0, 255, width).astype(np.uint8)][None], height, axis=0)


COLOUR_BAR_CAPTION = ("Colour scale: dark purple = low, yellow = high relevance for the class (viridis). Each map is scaled to its "
                      "own maximum, so colours compare regions within an image, not images.")


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Boolean outline (one pixel) of a mask, to draw the lesion's border on an overlay."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner
