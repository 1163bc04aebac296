"""Behaviour of the synthetic chest-radiograph phantom (the embedded demo data set)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.phantom import (
    DESCRIPTION,
    LABEL_EFFUSION,
    LABEL_NORMAL,
    MANIFEST_COLUMNS,
    Anatomy,
    Distractors,
    PhantomParams,
    make_demo_dataset,
    plan_dataset,
    render_phantom,
)


def read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
        return list(reader)


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def render_pair(seed: int, effusion: str, size: int = 96, effusion_size: float = 0.3):
    """The same patient and film drawn with and without fluid."""
    anatomy = Anatomy.sample(np.random.default_rng(seed))
    kw = dict(size=size, anatomy=anatomy, distractors=Distractors(), effusion_size=effusion_size)
    wet, mask = render_phantom(np.random.default_rng(seed + 1), effusion=effusion, **kw)
    dry, no_mask = render_phantom(np.random.default_rng(seed + 1), effusion=None, **kw)
    return wet, dry, mask, no_mask


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "set", n_per_class=12, size=64, seed=3)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path, demo: Path) -> None:
    again = make_demo_dataset(tmp_path / "again", n_per_class=12, size=64, seed=3)
    assert folder_bytes(again.parent) == folder_bytes(demo.parent)
    other = make_demo_dataset(tmp_path / "other", n_per_class=12, size=64, seed=4)
    a, b = folder_bytes(demo.parent), folder_bytes(other.parent)
    assert a["images/demo-00001.png"] != b["images/demo-00001.png"]


def test_manifest_has_exact_columns_counts_and_relative_paths(demo: Path) -> None:
    rows = read_manifest(demo)
    assert [r["image_id"] for r in rows] == [f"demo-{i:05d}" for i in range(1, 25)]
    assert sum(r["label"] == LABEL_NORMAL for r in rows) == 12
    assert sum(r["label"] == LABEL_EFFUSION for r in rows) == 12
    for r in rows:
        assert r["synthetic"] == "1" and r["view"] in {"PA", "AP"} and r["patient_id"].startswith("P")
        assert r["path"] == f"images/{r['image_id']}.png"
        with Image.open(demo.parent / r["path"]) as im:
            assert im.mode == "L" and im.size == (64, 64)
            assert im.info["Description"] == DESCRIPTION
    marker = (demo.parent / "SYNTHETIC.txt").read_text()
    assert "SYNTHETIC" in marker and "seed=3" in marker and "n_per_class=12" in marker


def test_patients_have_several_images_but_one_label_and_classes_stay_exact() -> None:
    plan = plan_dataset(150, seed=1)
    labels, counts = defaultdict(set), defaultdict(int)
    for item in plan:
        labels[item.patient_id].add(item.label)
        counts[item.patient_id] += 1
    assert all(len(v) == 1 for v in labels.values())
    multi = sum(n > 1 for n in counts.values()) / len(counts)
    assert 0.15 < multi < 0.45 and max(counts.values()) <= 3
    assert sum(i.label == LABEL_NORMAL for i in plan) == 150 == sum(i.label == LABEL_EFFUSION for i in plan)
    assert all((i.effusion is None) == (i.label == LABEL_NORMAL) for i in plan)


def test_masks_exist_exactly_for_positives_and_sit_at_the_lung_bases(demo: Path) -> None:
    rows = read_manifest(demo)
    saved = {p.name for p in (demo.parent / "masks").iterdir()}
    assert saved == {f"{r['image_id']}_mask.png" for r in rows if r["label"] == LABEL_EFFUSION}
    for r in rows:
        if r["label"] == LABEL_NORMAL:
            assert r["mask_path"] == ""
            continue
        assert r["mask_path"] == f"masks/{r['image_id']}_mask.png"
        mask = np.array(Image.open(demo.parent / r["mask_path"]))
        assert set(np.unique(mask)) <= {0, 255} and mask.any()
        ys = np.nonzero(mask)[0]
        assert ys.mean() > 0.45 * mask.shape[0] and ys.max() > 0.55 * mask.shape[0]  # dependent: at the bases


def test_fluid_is_brighter_than_the_same_lung_without_it_and_changes_nothing_else() -> None:
    for seed in range(4):
        wet, dry, mask, no_mask = render_pair(seed, "both")
        assert not no_mask.any() and mask.any()
        diff = wet.astype(float) - dry.astype(float)
        assert diff[mask].mean() > 25  # a medium effusion is plainly visible
        upper = np.abs(diff[: int(0.35 * wet.shape[0])])  # the upper chest, well above any fluid
        assert upper.max() <= 1 and upper.mean() < 0.01


def test_effusion_side_follows_radiograph_convention_and_size_controls_extent() -> None:
    _, _, left, _ = render_pair(5, "left")  # patient's left is shown on the image right
    _, _, right, _ = render_pair(5, "right")
    assert np.nonzero(left)[1].min() > 48 and np.nonzero(right)[1].max() < 48
    _, _, small, _ = render_pair(5, "both", effusion_size=0.05)
    _, _, large, _ = render_pair(5, "both", effusion_size=0.45)
    assert 0 < small.sum() < large.sum() / 4


def test_distractors_and_confounders_are_as_common_in_both_classes() -> None:
    plan = plan_dataset(400, seed=2)
    def rate(label: str, f) -> float:
        items = [i for i in plan if i.label == label]
        return sum(bool(f(i)) for i in items) / len(items)
    checks = {
        "line": lambda i: i.distractors.line, "ng_tube": lambda i: i.distractors.ng_tube,
        "marker": lambda i: i.distractors.marker, "ecg": lambda i: i.distractors.ecg_leads,
        "confounder": lambda i: i.distractors.confounder, "AP": lambda i: i.view == "AP",
    }
    for name, f in checks.items():
        normal, effusion = rate(LABEL_NORMAL, f), rate(LABEL_EFFUSION, f)
        assert 0.05 < normal < 0.95 and abs(normal - effusion) < 0.1, name


def test_render_is_deterministic_for_any_size_and_rejects_unknown_sides() -> None:
    anatomy = Anatomy.sample(np.random.default_rng(0), PhantomParams())
    for size in (32, 77, 128):
        a, ma = render_phantom(np.random.default_rng(9), size=size, effusion="right", anatomy=anatomy)
        b, mb = render_phantom(np.random.default_rng(9), size=size, effusion="right", anatomy=anatomy)
        assert a.shape == ma.shape == (size, size) and a.dtype == np.uint8 and ma.dtype == bool
        assert np.array_equal(a, b) and np.array_equal(ma, mb)
    with pytest.raises(ValueError, match="effusion must be one of"):
        render_phantom(np.random.default_rng(0), size=64, effusion="middle", anatomy=anatomy)


def test_films_of_one_patient_look_more_alike_than_films_of_different_patients() -> None:
    same, other = [], []
    for seed in range(6):
        anatomy = Anatomy.sample(np.random.default_rng(seed))
        stranger = Anatomy.sample(np.random.default_rng(100 + seed))
        kw = dict(size=64, effusion=None, distractors=Distractors())
        first = render_phantom(np.random.default_rng(seed), anatomy=anatomy, **kw)[0].astype(float)
        second = render_phantom(np.random.default_rng(50 + seed), anatomy=anatomy, **kw)[0].astype(float)
        third = render_phantom(np.random.default_rng(50 + seed), anatomy=stranger, **kw)[0].astype(float)
        assert not np.array_equal(first, second)
        same.append(np.abs(first - second).mean())
        other.append(np.abs(first - third).mean())
    assert np.mean(same) < np.mean(other)


def test_refuses_a_folder_that_is_not_a_demo_set(tmp_path: Path) -> None:
    precious = tmp_path / "mine.txt"
    precious.write_text("keep me")
    with pytest.raises(ValueError, match="not a previous demo set"):
        make_demo_dataset(tmp_path, n_per_class=1, size=32)
    assert precious.read_text() == "keep me" and not (tmp_path / "images").exists()


def test_overwrites_a_previous_demo_set_and_reports_progress(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "demo"
    make_demo_dataset(out, n_per_class=4, size=32, seed=0)
    calls: list[tuple[int, int]] = []
    manifest = make_demo_dataset(out, n_per_class=2, size=32, seed=0, progress=lambda d, t: calls.append((d, t)))
    assert manifest == out / "manifest.csv"
    assert calls == [(i, 4) for i in range(1, 5)]
    assert len(read_manifest(manifest)) == 4
    assert len(list((out / "images").iterdir())) == 4 and len(list((out / "masks").iterdir())) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_per_class": 0}, "n_per_class must be an integer >= 1"),
     ({"size": 31}, "size must be an integer between 32 and 2048"),
     ({"size": 4096}, "size must be an integer between 32 and 2048"),
     ({"size": 64.0}, "size must be an integer")],
)
def test_rejects_bad_arguments_with_a_clear_message(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_demo_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
