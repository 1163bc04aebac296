"""DICOM decoding: the first frame of a DICOM file as 8-bit grayscale, shown as a radiologist would see it.

Radiographs come from PACS exports as DICOM far more often than as PNG. What a DICOM stores
is not what is displayed: pixel values pass the modality LUT (Rescale Slope/Intercept), then
the VOI LUT or window the modality chose, and MONOCHROME1 images are displayed inverted.
This module applies those steps with pydicom's own functions, so bone is bright in every
image whatever the scanner wrote.

Privacy: a DICOM header holds patient names, dates and other identifiers. Only the pixel
module and display tags are parsed (`PIXEL_TAGS`); nothing else is read into memory, and
`decode_dicom` returns pixels only. The few descriptive fields a caller may want (view,
modality) come from `header_fields`, limited to the allow-list `HEADER_FIELDS`.

Every failure is a DecodeError with a short reason, never a crash: a DICOM without pixels,
a compressed one whose decoder is not installed, truncated data, absurd sizes.
"""

from __future__ import annotations

import io

import numpy as np

from core.data.decode import DecodeError

try:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import get_decoder
    from pydicom.pixels.processing import (
        apply_color_lut,
        apply_modality_lut,
        apply_voi,
        apply_voi_lut,
        apply_windowing,
    )
    from pydicom import uid as dicom_uid
except ImportError:  # decoding PNG/JPEG data sets must keep working without pydicom
    pydicom = None

SUFFIXES = (".dcm", ".dicom")

# The only tags ever parsed for decoding: image pixel module, palette, modality LUT, VOI LUT.
# Names, dates, IDs and free text are skipped unread.
PIXEL_TAGS = [
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
    "Rows", "Columns", "NumberOfFrames",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor", "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
    "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
]

# Non-identifying header fields a caller may show or use (e.g. the view for a cohort filter).
# An allow-list: anything not named here is never returned.
HEADER_FIELDS = (
    "Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation",
    "Rows", "Columns", "BitsStored", "NumberOfFrames", "SamplesPerPixel",
)

_PIXEL_DATA = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# What to install when pydicom has no decoder for a compressed transfer syntax.
_LIBJPEG = "pip install pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pip install pylibjpeg pylibjpeg-openjpeg"
_INSTALL_HINTS = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG,  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": _LIBJPEG,  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57": _LIBJPEG,  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": _LIBJPEG,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": _LIBJPEG,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _LIBJPEG,  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90": _OPENJPEG,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _OPENJPEG,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _OPENJPEG,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": _OPENJPEG,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": _OPENJPEG,  # HTJ2K
    "1.2.840.10008.1.2.5": "pip install pylibjpeg pylibjpeg-rle",  # RLE (pydicom decodes it itself)
}

# The two-letter value representations that may follow a tag in explicit-VR encoding.
_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
    b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN",
    b"UR", b"US", b"UT", b"UV",
}


class NotDicom(DecodeError):
    """A file that looked like a DICOM without preamble turned out not to be one (let other decoders try)."""


def has_dicom_magic(data: bytes) -> bool:
    """A standard DICOM file: 128-byte preamble, then 'DICM'."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def looks_like_raw_dicom(data: bytes) -> bool:
    """A DICOM data set without preamble (old ACR-NEMA style exports): it starts with a group 0002 or 0008 element.

    Only a cheap plausibility check; `decode_dicom(force=True)` decides by actually parsing.
    """
    if len(data) < 12:
        return False
    for order in ("little", "big"):
        group = int.from_bytes(data[0:2], order)
        element = int.from_bytes(data[2:4], order)
        if group not in (0x0002, 0x0008) or element > 0x0100:
            continue
        if data[4:6] in _VRS:  # explicit VR
            return True
        length = int.from_bytes(data[4:8], order)  # implicit VR: a 4-byte length that fits in the file
        if length < len(data) - 8:
            return True
    return False


def decode_dicom(data: bytes, *, max_pixels: int, force: bool = False) -> np.ndarray:
    """The first frame of a DICOM file as a uint8 grayscale array (rows, columns); pixels only.

    Steps: modality LUT (Rescale Slope/Intercept), then VOI LUT or Window Center/Width when the
    file has them (min-max of the image otherwise), MONOCHROME1 inverted so bone is bright,
    colour (RGB, YBR, palette) converted to luminance. A multi-frame file gives its first frame.

    Args:
        data: the file's bytes.
        max_pixels: refuse files with more than this many pixels (rows x columns x frames).
        force: read a data set without the 'DICM' preamble; raise NotDicom when it is none.

    Raises:
        DecodeError: with a short reason; NotDicom when `force` found no DICOM structure.
    """
    if pydicom is None:
        raise DecodeError("DICOM file, but pydicom is not installed: pip install pydicom")
    ds = _read(data, force)
    if not any(name in ds for name in _PIXEL_DATA):
        if "Rows" in ds:  # an image header without its pixels: pydicom stops quietly at the end of a cut file
            raise DecodeError("DICOM without pixel data after an image header (truncated file?)")
        raise DecodeError("DICOM without pixel data (a report or other non-image object, or a truncated file)")
    rows, columns, frames = _dimensions(ds)
    if rows * columns * frames > max_pixels:
        raise DecodeError(
            f"absurd pixel count ({columns}x{rows}x{frames} frames); at most {max_pixels:,} pixels are accepted"
        )
    tsyntax = _transfer_syntax(ds)
    decoder = _decoder(tsyntax)
    try:
        arr, props = decoder.as_array(ds, index=0)
    except Exception as exc:  # pydicom and its plugins raise many types for broken data
        reason = _short(exc)
        if "less than expected" in reason:
            raise DecodeError(f"truncated DICOM pixel data: {reason}") from None
        raise DecodeError(f"cannot decode DICOM pixel data: {reason}") from None
    photometric = str(props.get("photometric_interpretation") or ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 and not (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
        raise DecodeError(f"unexpected DICOM pixel array shape {arr.shape}")
    try:
        if photometric == "PALETTE COLOR" and arr.ndim == 2:
            return _color_to_gray(apply_color_lut(arr, ds))
        if arr.ndim == 3:
            return _color_to_gray(arr, bits=int(props.get("bits_stored") or ds.get("BitsStored") or 8))
    except Exception as exc:
        raise DecodeError(f"cannot convert DICOM colour ({photometric}) to gray: {_short(exc)}") from None
    return _monochrome_to_gray(arr, ds, invert=photometric == "MONOCHROME1")


def header_fields(data: bytes) -> dict[str, str]:
    """The allow-listed, non-identifying header fields (`HEADER_FIELDS`) present in a DICOM file.

    Pixel data is not read. An unreadable header gives an empty dict.
    """
    if pydicom is None or not (has_dicom_magic(data) or looks_like_raw_dicom(data)):
        return {}
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), force=not has_dicom_magic(data), stop_before_pixels=True, specific_tags=list(HEADER_FIELDS)
        )
    except Exception:
        return {}
    return {name: str(ds[name].value) for name in HEADER_FIELDS if name in ds and ds[name].value not in (None, "")}


def _read(data: bytes, force: bool):
    """Parse only PIXEL_TAGS (plus the file meta header pydicom always reads)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force, specific_tags=PIXEL_TAGS)
    except InvalidDicomError:
        raise (NotDicom if force else DecodeError)("not a DICOM file (no DICOM header)") from None
    except Exception as exc:
        if force:
            raise NotDicom(f"not a readable DICOM: {_short(exc)}") from None
        raise DecodeError(f"truncated or damaged DICOM header: {_short(exc)}") from None
    if force and not any(name in ds for name in ("Rows", *_PIXEL_DATA)):
        raise NotDicom("no DICOM image elements found")  # garbage, or a bare non-image DICOM: not an image either way
    return ds


def _dimensions(ds) -> tuple[int, int, int]:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError):
        raise DecodeError("DICOM header lacks valid Rows/Columns/NumberOfFrames") from None
    if rows <= 0 or columns <= 0 or frames <= 0:
        raise DecodeError(f"DICOM header gives an empty image ({columns}x{rows}x{frames} frames)")
    return rows, columns, frames


def _transfer_syntax(ds):
    """The data set's transfer syntax; guessed from the encoding for files without file meta header."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    tsyntax = meta.get("TransferSyntaxUID")
    if tsyntax:
        return tsyntax
    pixels = ds[next(name for name in _PIXEL_DATA if name in ds)]
    if pixels.is_undefined_length:
        raise DecodeError("compressed DICOM pixel data without a transfer syntax in the header")
    implicit, little = ds.original_encoding
    if little is False:
        tsyntax = dicom_uid.ExplicitVRBigEndian
    else:
        tsyntax = dicom_uid.ImplicitVRLittleEndian if implicit else dicom_uid.ExplicitVRLittleEndian
    meta.TransferSyntaxUID = tsyntax
    return tsyntax


def _decoder(tsyntax):
    name = getattr(tsyntax, "name", str(tsyntax)) or str(tsyntax)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise DecodeError(f"DICOM transfer syntax {name} ({tsyntax}) cannot be decoded") from None
    if not decoder.is_available:
        hint = _INSTALL_HINTS.get(str(tsyntax), "see pydicom's list of pixel data decoders")
        raise DecodeError(f"DICOM transfer syntax {name} needs a decoder: {hint}")
    return decoder


def _monochrome_to_gray(arr: np.ndarray, ds, *, invert: bool) -> np.ndarray:
    """Modality LUT, then VOI LUT / window (or min-max), scaled to 0..255; MONOCHROME1 inverted."""
    try:
        values = apply_modality_lut(arr, ds)
    except Exception:
        values = arr  # a broken modality LUT: the stored values still show the anatomy
    values = np.asarray(values)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.array_equal(values, np.round(values)):
        values = values.astype(np.int64)  # VOI LUTs index by integer value
    shown, lo, hi = _apply_voi(values, ds)
    if shown is None:  # no (usable) VOI: the image's own range
        shown = values.astype(np.float64)
        finite = shown[np.isfinite(shown)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    shown = np.nan_to_num(np.asarray(shown, dtype=np.float64), nan=lo, posinf=hi, neginf=lo)
    scaled = np.clip((shown - lo) / (hi - lo), 0.0, 1.0) * 255.0 if hi > lo else np.zeros_like(shown)
    if invert:
        scaled = 255.0 - scaled
    return np.round(scaled).astype(np.uint8)


def _apply_voi(values: np.ndarray, ds):
    """(shown, lo, hi): the VOI output and its full output range, or (None, 0, 0) when there is no usable VOI."""
    has_lut = bool(ds.get("VOILUTSequence")) and all(
        ds.VOILUTSequence[0].get(k) is not None for k in ("LUTDescriptor", "LUTData")
    )
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window):
        return None, 0.0, 0.0
    try:
        shown = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        if has_lut:  # apply_voi_lut prefers the LUT: its range is that of the table's entries
            n, first = int(ds.VOILUTSequence[0].LUTDescriptor[0]) or 2**16, int(ds.VOILUTSequence[0].LUTDescriptor[1])
            table = np.asarray(apply_voi(np.arange(first, first + n, dtype=np.int64), ds, index=0), dtype=np.float64)
            lo, hi = float(table.min()), float(table.max())
        else:  # windowing maps below/above the window to its output minimum/maximum
            with np.errstate(over="ignore"):
                lo, hi = (float(v) for v in apply_windowing(np.array([-np.inf, np.inf]), ds, index=0))
    except Exception:  # a malformed window or LUT: fall back to min-max rather than losing the image
        return None, 0.0, 0.0
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        return None, 0.0, 0.0
    return shown, lo, hi


def _color_to_gray(rgb: np.ndarray, bits: int | None = None) -> np.ndarray:
    """ITU-R 601 luminance (as Pillow's convert('L')), scaled from the data's bit depth to 0..255."""
    if bits is None:  # palette output: uint8 or uint16, by the LUT's bits per entry
        bits = 8 if rgb.dtype == np.uint8 else 16
    rgb = rgb[..., :3].astype(np.float64)
    maximum = float(2 ** min(max(bits, 8), 32) - 1)
    gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.round(np.clip(gray / maximum * 255.0, 0, 255)).astype(np.uint8)


def _short(exc: BaseException) -> str:
    """One line of at most 200 characters from pydicom's (often multi-line) messages."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    text = "; ".join(lines).replace("Unable to decode as exceptions were raised by all available plugins:;", "every decoder failed:")
    text = text.split(" - the dataset may be corrupted")[0]
    return text if len(text) <= 200 else text[:197] + "..."
