"""Decoding, the cache, manifest builders and splits: bad files exclude themselves, patients never straddle folds."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

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
