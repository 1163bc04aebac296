"""DICOM decoding: pixels shown as a radiologist sees them, compressed files decoded, identifiers never kept, bad files excluded with a reason."""

from __future__ import annotations

import io
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom import uid  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402

from core.data import dicom  # noqa: E402
from core.data.cache import ImageCache  # noqa: E402
from core.data.decode import DecodeError, decode_bytes, decode_gray  # noqa: E402
from core.data.sources import IMAGE_SUFFIXES, build_manifest  # noqa: E402

# pydicom warns (rightly) about the odd files these tests feed it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN-0042-XYZ", "PatientBirthDate": "19510203", "StudyDate": "20240517"}


def bundled(name: str) -> bytes:
    """The bytes of one of pydicom's bundled test files; skipped (never downloaded) when this pydicom lacks it."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with pydicom {pydicom.__version__} and tests never download")
    return Path(path).read_bytes()


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    preamble: bool = True,
    compress: str = "",
    **elements,
) -> bytes:
    """A DX radiograph as DICOM bytes, with patient identifiers in its header; `elements` add or override tags."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = uid.generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    bits = bits_stored or (8 if pixels.dtype == np.uint8 else 16)
    ds.set_pixel_data(pixels, photometric, bits, generate_instance_uid=False)
    for key, value in elements.items():
        setattr(ds, key, value)
    if compress:
        ds.compress(compress, generate_instance_uid=False)
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:  # an old-style export: the bare data set, no preamble, no 'DICM', no file meta header
        del ds.file_meta
        ds.preamble = None
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def gradient(rows: int = 48, cols: int = 64, top: int = 4095) -> np.ndarray:
    """Dark left, bright right: a 12-bit ramp in uint16."""
    return np.tile(np.linspace(0, top, cols).round().astype(np.uint16), (rows, 1))


# -- bundled files and compressed transfer syntaxes --------------------------------------------


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "examples_palette.dcm", "SC_rgb_rle.dcm"])
def test_bundled_dicoms_become_gray_squares(name):
    """CT (signed, rescaled), MR (windowed), a 15-frame dose grid, palette colour and RGB all decode to a usable image."""
    out = decode_bytes(bundled(name), 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert out.std() > 5, "a decoded image should not be flat"


@pytest.mark.parametrize(
    "compressed, original",
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),  # RLE Lossless (pydicom itself)
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000 Lossless (pylibjpeg-openjpeg)
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS Lossless (pylibjpeg-libjpeg)
        ("MR_small_bigendian.dcm", "MR_small.dcm"),  # Explicit VR Big Endian
        ("MR_small_implicit.dcm", "MR_small.dcm"),  # Implicit VR Little Endian
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm"),  # JPEG Lossless SV1, RGB (pylibjpeg-libjpeg)
    ],
)
def test_lossless_syntaxes_decode_exactly_like_the_original(compressed, original):
    """pydicom ships the same image in several transfer syntaxes; lossless ones must give identical pixels."""
    assert np.array_equal(decode_bytes(bundled(compressed), 64), decode_bytes(bundled(original), 64))


@pytest.mark.parametrize(
    "lossy, original",
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm"),  # JPEG Baseline, YBR_FULL
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", "SC_rgb_rle.dcm"),  # JPEG Baseline, YBR_FULL_422
        ("SC_rgb_gdcm_KY.dcm", "SC_rgb_rle.dcm"),  # JPEG 2000
        ("SC_rgb_jls_lossy_line.dcm", "SC_rgb_rle.dcm"),  # JPEG-LS near-lossless
    ],
)
def test_lossy_syntaxes_decode_close_to_the_original(lossy, original):
    a, b = decode_bytes(bundled(lossy), 64).astype(float), decode_bytes(bundled(original), 64).astype(float)
    assert np.abs(a - b).mean() < 3


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPGExtended.dcm", "JPEGLSNearLossless_16.dcm", "693_J2KI.dcm", "image_dfl.dcm"])
def test_other_compressed_syntaxes_decode(name):
    """JPEG 2000 (16-bit), 12-bit JPEG Extended, 16-bit JPEG-LS, signed 14-bit J2K, deflated: no decoder is missing."""
    out = decode_bytes(bundled(name), 32)
    assert out.shape == (32, 32) and out.std() > 1


@pytest.mark.parametrize("syntax", [uid.RLELossless, uid.JPEG2000Lossless])
def test_a_radiograph_compressed_here_decodes_like_its_uncompressed_self(syntax):
    """Our own 12-bit radiograph, compressed with pydicom's encoders, round-trips to the same pixels."""
    pixels = gradient(top=3000) + np.arange(48, dtype=np.uint16)[:, None] * 20
    plain = decode_bytes(make_dicom(pixels, bits_stored=12), 48)
    assert np.array_equal(decode_bytes(make_dicom(pixels, bits_stored=12, compress=syntax), 48), plain)


# -- display: MONOCHROME1, modality LUT, VOI LUT / window, bit depth, frames, colour -------------


def test_monochrome1_is_inverted_so_bone_is_bright():
    """MONOCHROME1 means 'high value = dark': the same stored pixels must show as the exact negative of MONOCHROME2."""
    pixels = gradient(rows=64, cols=64)
    mono2 = decode_bytes(make_dicom(pixels, bits_stored=12), 64)
    mono1 = decode_bytes(make_dicom(pixels, photometric="MONOCHROME1", bits_stored=12), 64)
    assert np.array_equal(mono1.astype(int), 255 - mono2.astype(int))
    assert mono2[:, -1].mean() > 240 and mono1[:, -1].mean() < 15


def test_rescale_slope_and_intercept_are_applied_before_the_window():
    """A CT-style window is given in rescaled units (HU): it only lands on the right pixels once the rescale is applied."""
    stored = np.array([[0, 824, 1024, 1224, 2000]], dtype=np.uint16).repeat(5, axis=0)  # -1024, -200, 0, 200, 976 HU
    data = make_dicom(stored, bits_stored=12, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=400)
    row = decode_bytes(data, 5)[2]
    assert row[0] == 0 and row[1] < 5 and 120 < row[2] < 135 and row[3] > 250 and row[4] == 255


def test_rescale_slope_scales_the_values():
    """Slope 2: a window at 2000 +- 100 selects stored values near 1000."""
    stored = np.array([[0, 950, 1000, 1050, 4000]], dtype=np.uint16).repeat(5, axis=0)
    row = decode_bytes(make_dicom(stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=0, WindowCenter=2000, WindowWidth=200), 5)[2]
    assert row[0] == 0 and row[1] < 5 and 120 < row[2] < 135 and row[3] > 250 and row[4] == 255


def test_window_center_and_width_are_applied_and_min_max_is_the_fallback():
    pixels = gradient(top=4095)
    windowed = decode_bytes(make_dicom(pixels, bits_stored=12, WindowCenter=1000, WindowWidth=200), 64)[0]
    x_900, x_1000, x_1100 = (int(round(v / 4095 * 63)) for v in (900, 1000, 1100))
    assert windowed[: x_900 - 1].max() == 0 and windowed[x_1100 + 1 :].min() == 255
    assert 90 < windowed[x_1000] < 165
    plain = decode_bytes(make_dicom(pixels, bits_stored=12), 64)[0]  # no window: min-max over 0..4095
    assert plain[0] == 0 and plain[-1] == 255 and 50 < plain[x_1000] < 75


def test_a_broken_window_falls_back_to_min_max_instead_of_losing_the_image():
    pixels = gradient()
    broken = decode_bytes(make_dicom(pixels, bits_stored=12, WindowCenter=1000, WindowWidth=0), 64)
    assert np.array_equal(broken, decode_bytes(make_dicom(pixels, bits_stored=12), 64))


def test_a_voi_lut_sequence_is_applied_in_preference_to_the_window():
    """The VOI LUT maps 0..4095 through a step at 2048; the window in the same file would look different."""
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "US", [0] * 2048 + [65535] * 2048)
    item.LUTExplanation = "STEP"
    data = make_dicom(gradient(), bits_stored=12, VOILUTSequence=[item], WindowCenter=500, WindowWidth=100)
    row = decode_bytes(data, 64)[0]
    assert row[:30].max() == 0 and row[34:].min() == 255


def test_12_bit_stored_in_16_ignores_junk_in_the_unused_high_bits():
    """Bits 12-15 of a 12-bit image may hold overlays or garbage; only BitsStored count."""
    pixels = gradient(top=4095)
    junk = pixels | (np.random.default_rng(0).integers(0, 16, pixels.shape, dtype=np.uint16) << 12)
    clean = decode_bytes(make_dicom(pixels, bits_stored=12), 48)
    assert np.array_equal(decode_bytes(make_dicom(pixels, bits_stored=12, PixelData=junk.tobytes()), 48), clean)


def test_signed_pixels_are_shown_by_their_range():
    pixels = (gradient().astype(np.int32) - 2048).astype(np.int16)  # PixelRepresentation 1
    row = decode_bytes(make_dicom(pixels, bits_stored=12), 64)[0]
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row.astype(int)) >= 0)


def test_multi_frame_files_give_their_first_frame():
    first = gradient(top=4095)
    frames = np.stack([first, first[:, ::-1], np.zeros_like(first)])
    out = decode_bytes(make_dicom(frames, bits_stored=12), 48)
    assert np.array_equal(out, decode_bytes(make_dicom(first, bits_stored=12), 48))


def test_rgb_dicom_becomes_luminance():
    """As Pillow's convert('L'): 0.299 R + 0.587 G + 0.114 B."""
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    assert np.all(decode_bytes(make_dicom(rgb, photometric="RGB"), 8) == 76)


def test_8_bit_grayscale_dicom_keeps_its_values_when_it_spans_the_range():
    pixels = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    assert np.array_equal(decode_bytes(make_dicom(pixels), 256)[0], np.arange(256))


# -- recognising DICOM ---------------------------------------------------------------------


def test_dicom_without_preamble_is_recognised_by_content():
    """Old exports have no 128-byte preamble and no 'DICM'; pydicom reads them with force=True."""
    pixels = gradient()
    raw = make_dicom(pixels, bits_stored=12, preamble=False)
    assert raw[128:132] != b"DICM" and dicom.looks_like_raw_dicom(raw)
    assert np.array_equal(decode_bytes(raw, 48), decode_bytes(make_dicom(pixels, bits_stored=12), 48))


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x08\x00\x05\x00CS\x0a\x00" + bytes(range(256)) * 4,  # starts like an explicit-VR element, then noise
        b"\x08\x00\x16\x00UI\x04\x001.2." + np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        b"\x08\x00\x16\x00\x04\x00\x00\x001.2." + np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        bytes(4000),
    ],
)
def test_garbage_that_looks_like_a_bare_dicom_is_not_taken_for_one(garbage):
    """The no-preamble check is only a hint: what pydicom cannot read as DICOM elements goes on to Pillow, which refuses it."""
    with pytest.raises(DecodeError, match="not an image"):
        decode_bytes(garbage, 16)


def test_the_dicm_magic_without_a_data_set_is_refused():
    with pytest.raises(DecodeError, match="DICOM"):
        decode_bytes(b"x" * 128 + b"DICM" + bytes(64), 16)


def test_the_file_name_does_not_matter(tmp_path):
    """A DICOM named .png and a PNG named .dcm both decode by what they are."""
    from PIL import Image

    dcm_as_png = tmp_path / "scan.png"
    dcm_as_png.write_bytes(make_dicom(gradient(), bits_stored=12))
    png_as_dcm = tmp_path / "image.dcm"
    Image.fromarray(np.full((10, 10), 99, np.uint8)).save(png_as_dcm, format="PNG")
    assert decode_gray(dcm_as_png, 16).shape == (16, 16)
    assert decode_gray(png_as_dcm, 16).mean() == 99


# -- bad DICOMs: a reason, never a crash or a hang -----------------------------------------------


def test_truncated_pixel_data_is_excluded_with_a_reason():
    with pytest.raises(DecodeError, match="truncated DICOM pixel data"):
        decode_bytes(bundled("MR_truncated.dcm"), 16)
    data = make_dicom(gradient(), bits_stored=12)
    with pytest.raises(DecodeError, match="truncated"):
        decode_bytes(data[: len(data) // 2], 16)


@pytest.mark.parametrize("keep", [140, 300, 650])
def test_truncated_header_is_excluded_with_a_reason(keep):
    """pydicom stops quietly where a cut file ends: what is missing is the pixel data, and the reason says it may be cut."""
    with pytest.raises(DecodeError, match="without pixel data.*truncated"):
        decode_bytes(make_dicom(gradient(), bits_stored=12)[:keep], 16)


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"])
def test_dicom_without_pixel_data_is_excluded_with_a_reason(name):
    with pytest.raises(DecodeError, match="DICOM without pixel data"):
        decode_bytes(bundled(name), 16)


@pytest.mark.parametrize(
    "elements",
    [{"Rows": 65535, "Columns": 65535}, {"NumberOfFrames": 100_000}],
)
def test_absurd_rows_columns_or_frames_are_refused_before_decoding(elements):
    """The header's claim is checked first: no allocation, no attempt to decode (which would say 'truncated')."""
    data = make_dicom(gradient(), bits_stored=12, **elements)
    start = time.perf_counter()
    with pytest.raises(DecodeError, match="absurd pixel count"):
        decode_bytes(data, 16)
    assert time.perf_counter() - start < 1.0


def test_the_pixel_limit_is_the_one_of_decode(monkeypatch):
    monkeypatch.setattr("core.data.decode.MAX_PIXELS", 1000)
    with pytest.raises(DecodeError, match="absurd pixel count .*1,000"):
        decode_bytes(make_dicom(gradient(), bits_stored=12), 16)


def test_missing_rows_is_excluded_with_a_reason():
    data = make_dicom(gradient(), bits_stored=12, Rows=None)
    with pytest.raises(DecodeError, match="Rows/Columns"):
        decode_bytes(data, 16)


def test_a_data_stream_no_decoder_can_read_is_excluded_with_a_reason():
    """A known-bad file in pydicom's set: 12-bit JPEG that libjpeg rejects and Pillow cannot do."""
    with pytest.raises(DecodeError, match="cannot decode DICOM pixel data: every decoder failed"):
        decode_bytes(bundled("JPEG-lossy.dcm"), 16)


def test_a_missing_decoder_says_what_to_install(monkeypatch):
    monkeypatch.setattr(dicom, "get_decoder", lambda ts: SimpleNamespace(is_available=False))
    data = make_dicom(gradient(), bits_stored=12, compress=uid.JPEG2000Lossless)
    with pytest.raises(DecodeError, match="JPEG 2000 Image Compression \\(Lossless Only\\) needs a decoder: pip install pylibjpeg pylibjpeg-openjpeg"):
        decode_bytes(data, 16)


def test_an_unsupported_transfer_syntax_is_excluded_with_a_reason():
    data = make_dicom(gradient(), bits_stored=12, compress=uid.RLELossless)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML  # video: pydicom has no decoder for it
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DecodeError, match="transfer syntax MPEG2 .* cannot be decoded"):
        decode_bytes(buf.getvalue(), 16)


def test_without_pydicom_dicom_files_say_what_to_install(monkeypatch):
    monkeypatch.setattr(dicom, "pydicom", None)
    with pytest.raises(DecodeError, match="pip install pydicom"):
        decode_bytes(make_dicom(gradient(), bits_stored=12), 16)


# -- privacy -----------------------------------------------------------------------------------


def test_identifiers_are_never_read_returned_or_cached(tmp_path):
    """Decoding parses only pixel and display tags; the cache holds pixels only; header_fields is an allow-list."""
    data = make_dicom(gradient(), bits_stored=12)
    assert b"Doe^Jane" in data and b"MRN-0042-XYZ" in data  # the file does hold them
    parsed = dicom._read(data, force=False)
    assert not any(key in parsed for key in PATIENT), "identifying tags must not even be parsed"
    out = decode_bytes(data, 32)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (32, 32)

    path = tmp_path / "scan.dcm"
    path.write_bytes(data)
    cache_root = tmp_path / "cache"
    assert ImageCache(cache_root).load(path, 32).pixels is not None
    for entry in cache_root.rglob("*"):
        if entry.is_file():
            blob = entry.read_bytes()
            for value in PATIENT.values():
                assert value.encode() not in blob, f"{value} leaked into {entry}"

    fields = dicom.header_fields(data)
    assert fields["ViewPosition"] == "PA" and fields["Modality"] == "DX" and fields["Rows"] == "48"
    assert set(fields) <= set(dicom.HEADER_FIELDS)
    assert not any(value in str(fields) for value in PATIENT.values())


# -- data sources and the cache, end to end ------------------------------------------------------


def test_class_folders_list_dicom_files(tmp_path):
    assert {".dcm", ".dicom"} <= IMAGE_SUFFIXES
    for label, top in (("Normal", 1000), ("Effusion", 4000)):
        for i in range(2):
            (tmp_path / label).mkdir(exist_ok=True)
            (tmp_path / label / f"{i}.dcm").write_bytes(make_dicom(gradient(top=top), bits_stored=12))
    m = build_manifest(str(tmp_path))
    assert m.source == "folders" and len(m.table) == 4
    assert all(p.endswith(".dcm") for p in m.table["path"])


def test_the_cache_loads_dicom_files_end_to_end(tmp_path):
    paths = []
    for i, name in enumerate(["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"]):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(bundled(name))
        paths.append(str(path))
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(bundled("rtplan.dcm"))
    cache = ImageCache(tmp_path / "cache")
    results = cache.load_many(paths + [str(bad)], 32, workers=2)
    assert all(r.pixels is not None and r.pixels.shape == (32, 32) and r.excluded_reason == "" for r in results[:3])
    assert results[3].pixels is None and "without pixel data" in results[3].excluded_reason
    assert all(r.cache_hit for r in cache.load_many(paths, 32, workers=2))
