"""Bad input at the command line: one line `error: ...` that says what to do, exit code 2, never a traceback;
bad files are excluded with their reason while the run goes on.

Cases already specified elsewhere are listed in the README's "Bad input" table with their test;
this module holds the rest, each through `python -m core` in-process.
"""

from __future__ import annotations

import errno
import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pandas as pd
import pytest
import torch

from core.__main__ import main
from core.results.store import Store

from conftest import blob_dataset

TINY = ["--no-progress", "--set", "weights=none", "--set", "image_size=32", "--set", "batch_size=4", "--set", "max_iterations=1",
        "--set", "folds=2", "--set", "gradcam=false"]


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def fails_with(message: str, *argv: str) -> str:
    """Run the CLI and check the contract for a problem the user can fix; returns the error line."""
    code, out, err = run_cli(*argv)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 2, err
    assert last.startswith("error: ") and message in last, last
    assert "Traceback" not in err and out == ""
    return last


@pytest.fixture
def blobs6(tmp_path) -> Path:
    return blob_dataset(tmp_path / "data", n_per_class=6)


def run_args(data: Path, runs: Path, *extra: str) -> list[str]:
    return ["run", "--data", str(data), "--runs-dir", str(runs), *TINY, *extra]


def test_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    fails_with("holds no sub-folders per class and no manifest.csv", *run_args(tmp_path / "empty", tmp_path / "runs"))


def test_one_class_only(tmp_path, blobs6):
    (blobs6 / "Effusion").rename(tmp_path / "elsewhere")
    fails_with("only one class in the data set; a classifier needs at least two", *run_args(blobs6, tmp_path / "runs"))


def test_fewer_images_in_a_class_than_folds(tmp_path, blobs6):
    fails_with("class 'Effusion' has only 6 images but 7 folds were asked for; use --set folds=6",
               *run_args(blobs6, tmp_path / "runs", "--set", "folds=7"))


def test_fewer_patients_in_a_class_than_folds(tmp_path, blobs6):
    files = sorted(blobs6.rglob("*.png"))
    pd.DataFrame({"path": [str(p) for p in files], "label": [p.parent.name for p in files],
                  "patient": [f"{p.parent.name}{i % 2}" for i, p in enumerate(files)]}).to_csv(tmp_path / "m.csv", index=False)
    fails_with("has only 2 patients but 3 folds were asked for; use --set folds=2",
               *run_args(tmp_path / "m.csv", tmp_path / "runs", "--set", "group_column=patient", "--set", "folds=3"))


def test_a_csv_without_the_label_column(tmp_path, blobs6):
    pd.DataFrame({"path": [str(p) for p in sorted(blobs6.rglob("*.png"))]}).to_csv(tmp_path / "m.csv", index=False)
    fails_with("CSV m.csv has no column 'label' (columns: path); choose one with --set label_column=NAME",
               *run_args(tmp_path / "m.csv", tmp_path / "runs"))


def test_an_unknown_positive_label(tmp_path, blobs6):
    fails_with("positive label(s) 'Pneumonia' not found; labels in the data: Effusion, Normal",
               *run_args(blobs6, tmp_path / "runs", "--set", "positive_labels=Pneumonia"))


@pytest.mark.parametrize("assignment, message", [
    ("nonsense=1", "unknown setting 'nonsense'"),
    ("learnig_rate=0.1", "Did you mean 'learning_rate'?"),
    ("learning_rate=-0.001", "learning_rate must be greater than 0.0, got -0.001"),
    ("batch_size=0", "batch_size must be at least 1, got 0"),
    ("folds=1", "folds must be at least 2"),
    ("max_iterations=many", "max_iterations must be a whole number, got 'many'"),
])
def test_unknown_fields_and_out_of_range_values(tmp_path, assignment, message):
    fails_with(message, *run_args(tmp_path / "not-even-read", tmp_path / "runs", "--set", assignment))


def test_a_runs_folder_that_cannot_be_created_stops_before_decoding(tmp_path, blobs6):
    (tmp_path / "a-file").write_text("not a folder")
    fails_with("cannot create runs folder", *run_args(blobs6, tmp_path / "a-file" / "runs"))
    assert not (tmp_path / "a-file").is_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_a_read_only_runs_folder(tmp_path, blobs6):
    (tmp_path / "ro").mkdir(mode=0o500)
    fails_with("is not writable", *run_args(blobs6, tmp_path / "ro"))


def test_an_unreadable_weights_file(tmp_path, blobs6):
    (tmp_path / "garbage.pth").write_bytes(b"\x00\x01 definitely not torch")
    line = fails_with("cannot read weights file", *run_args(blobs6, tmp_path / "runs", "--set", f"weights={tmp_path / 'garbage.pth'}"))
    assert "weights_only` set to `False" not in line and "torch.save(model.state_dict(), path)" in line  # never the unsafe advice


def test_a_weights_file_for_another_architecture(tmp_path, blobs6):
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "other.pth")
    fails_with("does not fit this backbone: 1 shape mismatch(es), e.g. conv1.weight (8, 3, 3, 3) vs (64, 3, 7, 7)",
               *run_args(blobs6, tmp_path / "runs", "--set", f"weights={tmp_path / 'other.pth'}"))


@pytest.mark.slow
def test_missing_corrupt_and_absurd_files_are_excluded_with_reasons_and_the_run_goes_on(tmp_path, blobs6, caplog):
    from test_data import _png_with_header_only

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.png").write_text("a text file named like an image")
    good = sorted(blobs6.rglob("*.png"))[0].read_bytes()
    (bad / "truncated.png").write_bytes(good[: len(good) // 3])
    (bad / "bomb.png").write_bytes(_png_with_header_only(100_000, 100_000))
    rows = [{"path": str(p), "label": p.parent.name} for p in sorted(blobs6.rglob("*.png"))]
    rows += [{"path": str(p), "label": "Normal"} for p in sorted(bad.iterdir())] + [{"path": str(bad / "gone.png"), "label": "Effusion"}]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    code, run_id, err = run_cli(*run_args(tmp_path / "m.csv", tmp_path / "runs"))
    assert code == 0, err
    store = Store(tmp_path / "runs")
    run = store.run(run_id.strip())
    assert run["status"] == "finished" and run["n_images"] == 12
    reasons = store.images(run["dataset_id"]).set_index("path")["excluded_reason"]
    assert reasons[str(bad / "gone.png")] == "file not found"
    assert reasons[str(bad / "empty.png")] == "empty file"
    assert reasons[str(bad / "notes.png")].startswith("not an image")
    assert reasons[str(bad / "truncated.png")].startswith("cannot decode")
    assert reasons[str(bad / "bomb.png")].startswith("absurd pixel count")
    assert "5 of 17 images excluded" in caplog.text  # logged once (on stderr), with the reasons counted


@pytest.mark.slow
def test_a_full_disk_while_saving_a_fold_fails_clearly_keeps_earlier_folds_and_can_resume(tmp_path, blobs6, monkeypatch):
    real = Store.save_fold
    calls = []

    def disk_fills_up_at_the_second_fold(self, run_id, fold, *args, **kwargs):
        calls.append(fold["fold"])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, run_id, fold, *args, **kwargs)

    monkeypatch.setattr(Store, "save_fold", disk_fills_up_at_the_second_fold)
    line = fails_with("is full (no space left on device) while saving fold 2; folds finished before it are kept",
                      *run_args(blobs6, tmp_path / "runs", "--run-id", "full"))
    assert line.endswith("continue with: python -m core resume full")
    store = Store(tmp_path / "runs")
    assert store.run("full")["status"] == "failed" and "is full" in store.run("full")["error"]
    assert store.folds("full")["fold"].tolist() == [0] and set(store.predictions("full")["fold"]) == {0}

    monkeypatch.setattr(Store, "save_fold", real)  # space freed
    code, out, err = run_cli("resume", "full", "--runs-dir", str(tmp_path / "runs"), "--no-progress")
    assert code == 0 and out.strip() == "full", err
    assert store.run("full")["status"] == "finished" and len(store.predictions("full")) == 12


def test_disk_full_inside_a_store_transaction_is_a_clear_error(tmp_path):
    from core.results.store import DiskFullError, is_disk_full

    store = Store(tmp_path)
    store.create_run("r")
    with pytest.raises(DiskFullError, match=f"the disk holding {tmp_path} is full"):
        with store.transaction():
            raise OSError(errno.ENOSPC, "No space left on device")
    import duckdb

    assert is_disk_full(duckdb.IOException('Could not write file "runs.duckdb.wal": No space left on device'))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_resume_of_an_unknown_run(tmp_path):
    fails_with("no run 'nope'", "resume", "nope", "--runs-dir", str(tmp_path / "runs"))
