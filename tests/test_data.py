"""Decoding, the cache, manifest builders and splits: bad files exclude themselves, patients never straddle folds."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, JpegImagePlugin

from core import CxrError
from core.data.cache import ImageCache
from core.data.decode import DecodeError, decode_bytes, decode_gray
from core.data.splits import assign_folds, check_no_leak
from core.data.sources import build_manifest

from conftest import write_image


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_modes_all_become_gray_uint8_squares():
    gradient = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (48, 1))
    cases = {
        "L": Image.fromarray(np.full((40, 60), 128, np.uint8)),
        "RGB": Image.new("RGB", (50, 30), (200, 100, 50)),
        "RGBA": Image.new("RGBA", (30, 30), (255, 255, 255, 255)),
        "P": Image.new("RGB", (30, 30), (10, 200, 10)).convert("P"),
        "I;16": Image.fromarray(gradient),
    }
    for mode, img in cases.items():
        out = decode_bytes(_png_bytes(img), 16)
        assert out.shape == (16, 16) and out.dtype == np.uint8, mode
    # 16-bit data is rescaled by its own range: darkest -> 0, brightest -> 255
    out16 = decode_bytes(_png_bytes(cases["I;16"]), 64)
    assert out16[:, 0].max() < 10 and out16[:, -1].min() > 245


def test_exif_orientation_is_applied():
    img = Image.fromarray(np.hstack([np.zeros((20, 10), np.uint8), np.full((20, 10), 255, np.uint8)]))
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees: the bright half must end up on the left
    out = decode_bytes(_png_bytes(img, format="JPEG", exif=exif), 20)
    assert out[:, :5].mean() > 200 and out[:, -5:].mean() < 50


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not an image"),
        ("truncated", "cannot decode"),
    ],
)
def test_bad_files_raise_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    if content == "truncated":
        content = _png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)))[:300]
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        decode_gray(path, 16)


def test_absurd_pixel_counts_are_refused_without_decoding(monkeypatch):
    monkeypatch.setattr("core.data.decode.MAX_PIXELS", 1000)
    with pytest.raises(DecodeError, match="absurd pixel count"):
        decode_bytes(_png_bytes(Image.new("L", (100, 100))), 16)


def test_cache_decodes_once_and_is_keyed_by_content(tmp_path, monkeypatch):
    a = write_image(tmp_path / "a.png", np.full((30, 30), 77, np.uint8))
    cache = ImageCache(tmp_path / "cache")
    first = cache.load(a, 16)
    assert not first.cache_hit and first.pixels.mean() == 77
    copy = tmp_path / "renamed.png"
    copy.write_bytes(a.read_bytes())
    calls = []
    monkeypatch.setattr("core.data.cache.decode_bytes", lambda *a, **k: calls.append(1))
    second = cache.load(copy, 16)
    assert second.cache_hit and np.array_equal(second.pixels, first.pixels) and calls == []
    # another size is another entry
    monkeypatch.undo()
    assert not cache.load(a, 24).cache_hit


def test_cache_reports_bad_files_instead_of_raising(tmp_path):
    (tmp_path / "x.png").write_bytes(b"junk")
    results = ImageCache(tmp_path / "c").load_many([str(tmp_path / "x.png"), str(tmp_path / "missing.png")], 16)
    assert [r.excluded_reason for r in results] == ["not an image (format not recognised)", "file not found"]


def test_class_folders_become_a_manifest(blobs):
    m = build_manifest(str(blobs))
    assert m.source == "folders" and not m.synthetic
    assert sorted(m.table["label"].unique()) == ["Effusion", "Normal"]
    assert list(m.table.columns) == ["image_id", "path", "label", "group", "view", "mask_path", "excluded_reason"]


def test_csv_manifest_with_chosen_columns_and_positive_values(tmp_path):
    for i in range(6):
        write_image(tmp_path / "img" / f"{i}.png", np.zeros((8, 8), np.uint8))
    pd.DataFrame({
        "file": [f"img/{i}.png" for i in range(6)],
        "finding": ["effusion", "none", "atelectasis", "effusion", "none", "none"],
        "subject": ["s1", "s1", "s2", "s3", "s4", "s5"],
    }).to_csv(tmp_path / "list.csv", index=False)
    m = build_manifest(str(tmp_path / "list.csv"), path_column="file", label_column="finding", group_column="subject", positive_labels="effusion")
    assert m.table["label"].tolist() == ["effusion", "Other", "Other", "effusion", "Other", "Other"]
    assert m.table["group"].tolist()[:2] == ["s1", "s1"]
    assert Path(m.table["path"][0]).is_file()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"path_column": "nope"}, "no column 'nope'.*--set path_column"),
        ({"positive_labels": "pneumonia"}, "positive label.*'pneumonia' not found"),
    ],
)
def test_csv_errors_say_what_to_fix(tmp_path, kwargs, message):
    pd.DataFrame({"path": ["a.png"], "label": ["x"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(CxrError, match=message):
        build_manifest(str(tmp_path / "m.csv"), **kwargs)


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CxrError, match="does not exist"):
        build_manifest(str(tmp_path / "nowhere"))


def test_grouped_splits_keep_each_patient_in_one_fold():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(60)], rng.integers(1, 4, 60))
    patient_label = {f"p{i}": i % 2 for i in range(60)}
    labels = np.array([patient_label[g] for g in groups])
    folds = assign_folds(labels, groups, folds=5, seed=3)
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1, g
    assert set(folds) == set(range(5))
    assert np.array_equal(folds, assign_folds(labels, groups, folds=5, seed=3))  # seeded
    for k in range(5):  # stratified: both classes in every held-out fold
        assert set(labels[folds == k]) == {0, 1}


def test_leak_check_catches_a_patient_in_two_folds():
    with pytest.raises(CxrError, match="more than one fold"):
        check_no_leak(np.array([0, 1, 1]), np.array(["a", "a", "b"]))


def test_too_few_patients_for_the_folds_says_what_to_do():
    labels, groups = np.array([0, 0, 0, 1, 1, 1]), np.array(["a", "b", "c", "d", "e", "e"])
    with pytest.raises(CxrError, match="class 'Effusion' has only 2 patients but 5 folds.*--set folds=2"):
        assign_folds(labels, groups, folds=5, seed=0, class_names=["Normal", "Effusion"])


def test_one_class_only_is_refused():
    with pytest.raises(CxrError, match="only one class"):
        assign_folds(np.zeros(10, int), None, folds=2, seed=0)


def test_the_class_named_like_normal_is_negative_by_default():
    from core.data.prepare import default_positive

    assert default_positive(["Effusion", "Normal"]) == 0
    assert default_positive(["No Finding", "Pleural Effusion"]) == 1
    assert default_positive(["A", "B", "C"]) == 2  # no normal class: the last in sorted order


# -- robust decoding of every source (16-bit, palettes, big JPEGs, bombs) -------------------------


def _png_with_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, followed by a tiny IDAT: costs nothing to store."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b"")


def _big_jpeg(width: int = 3000, height: int = 2500, mode: str = "L", **save_kw) -> tuple[bytes, np.ndarray]:
    """A radiograph-sized JPEG with smooth structure and a little noise, as a scanner would give."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    gray = (128 + 60 * np.sin(x / 90.0) * np.cos(y / 70.0) + rng.normal(0, 4, (height, width))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(gray) if mode == "L" else Image.fromarray(np.stack([gray] * 3, -1))
    return _png_bytes(img, format="JPEG", quality=90, **save_kw), gray


def test_16_bit_png_is_stretched_by_its_own_range():
    """A 16-bit radiograph may use only 1000..1300 of 0..65535: min-max makes it visible instead of black."""
    pixels = np.tile(np.linspace(1000, 1300, 64).round().astype(np.uint16), (8, 1))
    out = decode_bytes(_png_bytes(Image.fromarray(pixels)), 64)
    assert out[:, 0].max() <= 2 and out[:, -1].min() >= 253 and 110 < out[0, 32] < 145


def test_palette_png_with_transparency_shows_transparent_pixels_as_black():
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 200, 200, 200] + [0, 0, 0] * 254)
    img.paste(0, (0, 0, 10, 20))  # left half: palette entry 0, declared transparent
    data = _png_bytes(img, transparency=0)
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 0
    out = decode_bytes(data, 20)
    assert out[:, :9].max() == 0 and abs(int(out[:, 12:].mean()) - 200) <= 1


@pytest.mark.parametrize(
    "img, fmt",
    [
        (Image.new("1", (30, 20), 1), "PNG"),
        (Image.new("LA", (30, 20), (180, 255)), "PNG"),
        (Image.new("CMYK", (30, 20), (0, 0, 0, 75)), "JPEG"),
        (Image.fromarray(np.full((20, 30), 0.5, np.float32)), "TIFF"),
        (Image.fromarray(np.arange(600, dtype=np.int32).reshape(20, 30)), "TIFF"),
        (Image.new("RGB", (30, 20), (90, 90, 90)), "WEBP"),
        (Image.new("L", (30, 20), 90), "BMP"),
        (Image.new("L", (30, 20), 90), "PPM"),
        (Image.new("L", (30, 20), 90), "GIF"),
    ],
    ids=["1-bit", "LA", "CMYK-jpeg", "float-tiff", "int32-tiff", "webp", "bmp", "pgm", "gif"],
)
def test_other_modes_and_formats_become_gray_squares(img, fmt):
    out = decode_bytes(_png_bytes(img, format=fmt), 16)
    assert out.shape == (16, 16) and out.dtype == np.uint8


def test_big_jpegs_are_decoded_in_draft_mode_close_to_the_full_decode(monkeypatch):
    """libjpeg's 1/8 scale decoding of a 3000x2500 JPEG is several times faster and, after the resize, nearly identical."""
    data, _ = _big_jpeg()
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, mode, size: calls.append((mode, size)) or original(self, mode, size))
    drafted = decode_bytes(data, 224)
    assert calls == [("L", (224, 224))] and drafted.shape == (224, 224) and drafted.dtype == np.uint8
    monkeypatch.setattr("core.data.decode.DRAFT_FACTOR", 10**6)  # the full-resolution decode, for comparison
    full = decode_bytes(data, 224)
    assert len(calls) == 1
    diff = np.abs(drafted.astype(int) - full.astype(int))
    assert diff.mean() < 2 and diff.max() < 16


def test_draft_mode_keeps_colour_jpegs_and_exif_orientation_right():
    """Drafting straight to gray must not lose the EXIF rotation: the bright half ends up where the viewer shows it."""
    y = np.zeros((1200, 1600), np.uint8)
    y[:, 800:] = 220  # bright right half as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turns it 90 degrees clockwise -> bright half at the bottom
    data = _png_bytes(Image.fromarray(np.stack([y] * 3, -1)), format="JPEG", exif=exif)
    out = decode_bytes(data, 64)
    assert out.shape == (64, 64)
    assert out[-20:].mean() > 200 and out[:20].mean() < 20


def test_small_jpegs_are_not_drafted(monkeypatch):
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda *a: pytest.fail("draft used for a small JPEG"))
    data = _png_bytes(Image.new("L", (300, 300), 50), format="JPEG")
    assert decode_bytes(data, 224).shape == (224, 224)


def test_a_decompression_bomb_header_is_refused_fast_without_decoding():
    """A 100000 x 100000 PNG would need 10 GB: the header alone decides, in well under a second."""
    start = time.perf_counter()
    for width, height in ((100_000, 100_000), (20_000, 5_000)):
        with pytest.raises(DecodeError, match="absurd pixel count"):
            decode_bytes(_png_with_header_only(width, height), 224)
    assert time.perf_counter() - start < 1.0


def test_a_jpeg_claiming_absurd_dimensions_is_refused():
    data = bytearray(_png_bytes(Image.new("L", (16, 16), 80), format="JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (65000).to_bytes(2, "big") * 2  # height, width
    with pytest.raises(DecodeError, match="absurd pixel count|decompression bomb"):
        decode_bytes(bytes(data), 16)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _big_jpeg(800, 600)[0][:5000],  # JPEG cut short
        lambda: _png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 65535, (64, 64)).astype(np.uint16)))[:500],
        lambda: _png_with_header_only(64, 64),  # header fine, pixel data missing
    ],
    ids=["truncated-jpeg", "truncated-16-bit-png", "png-without-pixels"],
)
def test_truncated_images_are_excluded_with_a_reason(make):
    with pytest.raises(DecodeError, match="cannot decode"):
        decode_bytes(make(), 16)


@pytest.mark.parametrize(
    "content",
    [
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # EPS would start Ghostscript
        b"\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x00\x10\x00\x08\x00" + bytes(256),  # a TGA-like header
        b"PK\x03\x04" + bytes(100),  # a zip
    ],
    ids=["eps", "tga-like", "zip"],
)
def test_formats_outside_the_allow_list_are_not_images(content):
    with pytest.raises(DecodeError, match="not an image"):
        decode_bytes(content, 16)
