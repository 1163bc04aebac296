"""Robust image decoding: any readable file becomes a grayscale uint8 square, or a one-line reason why not.

A data set of thousands of files always holds a few bad ones; a bad file must exclude
itself with a reason, never crash or hang the run. DICOM files are recognised by content
(not by name) and decoded by `core.data.dicom`; everything else by Pillow.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

# Largest image we agree to decode. MIMIC-CXR JPEGs are about 3000 x 2500 = 7.5 MP; anything far
# larger is a mistake or a decompression bomb, and would eat the memory of a laptop.
MAX_PIXELS = 80_000_000

# Formats Pillow may open. Others (EPS runs Ghostscript, TGA and friends have no magic number
# and claim random bytes) are refused as "not an image". JPEG includes multi-picture (MPO) JPEGs.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "TIFF", "GIF", "WEBP", "PPM", "JPEG2000")

# JPEGs at least this many times the target size are decoded at 1/2, 1/4 or 1/8 scale by
# libjpeg itself (Pillow's draft mode): several times faster for 3000 x 2500 radiographs, and the
# result still has at least the target size before the final resize.
DRAFT_FACTOR = 2


class DecodeError(Exception):
    """The file cannot be used; the message is the reason stored in the manifest."""


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, or DecodeError('file not found' / 'empty file')."""
    path = Path(path)
    if not path.is_file():
        raise DecodeError("file not found")
    data = path.read_bytes()
    if not data:
        raise DecodeError("empty file")
    return data


def decode_gray(path: str | Path, size: int) -> np.ndarray:
    """Read an image file and return it as uint8 grayscale of shape (size, size); see decode_bytes."""
    return decode_bytes(read_bytes(path), size)


def decode_bytes(data: bytes, size: int) -> np.ndarray:
    """Decode an encoded image and return it as uint8 grayscale of shape (size, size).

    As the study: the whole image is resized to a square (no cropping, aspect not kept).
    16-bit images are rescaled by their own min-max, since their stored range varies.
    DICOM (with or without its 128-byte preamble) goes through `core.data.dicom.decode_dicom`.

    Raises:
        DecodeError: with a short reason (not an image, truncated, too large).
    """
    # JPEG and PNG (nearly every radiograph export) skip the DICOM checks, and so the 0.4 s pydicom
    # import in each decoding worker process: neither signature can begin a DICOM data set, and a
    # preamble DICOM file is recognised by 'DICM' at byte 128 whatever its first bytes are.
    if data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n":
        if data[128:132] != b"DICM":
            return _decode_pillow(data, size)
    from core.data import dicom  # imported here: core.data.dicom imports DecodeError from this module

    if dicom.has_dicom_magic(data):
        return _decode_dicom(data, size, force=False)
    if dicom.looks_like_raw_dicom(data):
        try:
            return _decode_dicom(data, size, force=True)
        except dicom.NotDicom:
            pass  # only looked like DICOM: let Pillow try
    return _decode_pillow(data, size)


def _decode_pillow(data: bytes, size: int) -> np.ndarray:
    """Everything that is not DICOM, through Pillow (large JPEGs in draft mode)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as img:
                w, h = img.size
                if w * h > MAX_PIXELS or w <= 0 or h <= 0:
                    raise DecodeError(f"absurd pixel count ({w}x{h}); at most {MAX_PIXELS:,} pixels are accepted")
                if isinstance(img, JpegImagePlugin.JpegImageFile) and min(w, h) >= DRAFT_FACTOR * size:
                    img.draft("L", (size, size))  # decode scaled down (and straight to gray) in libjpeg
                img = ImageOps.exif_transpose(img)
                gray = _to_gray(img)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not an image (format not recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DecodeError("absurd pixel count (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated data, broken headers, bad palettes
        raise DecodeError(f"cannot decode: {exc}") from None
    except Exception as exc:  # malformed files reach odd corners of Pillow's plugins; one bad file must not stop a run
        raise DecodeError(f"cannot decode: {type(exc).__name__}: {exc}") from None
    return np.asarray(gray.resize((size, size), Image.BICUBIC), dtype=np.uint8)


def _decode_dicom(data: bytes, size: int, *, force: bool) -> np.ndarray:
    """core.data.dicom's full-resolution gray frame, resized like every other image; any failure is a DecodeError."""
    from core.data import dicom

    try:
        gray = dicom.decode_dicom(data, max_pixels=MAX_PIXELS, force=force)
    except DecodeError:
        raise
    except Exception as exc:  # a corner of pydicom or a codec plugin not foreseen in core.data.dicom
        raise DecodeError(f"cannot decode DICOM: {type(exc).__name__}: {exc}") from None
    image = Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8))
    return np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.uint8)


def _to_gray(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit 'L', decoding the pixels (so truncation shows up here)."""
    img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("L")
