"""The benchmark's machinery (`python -m core bench`) at a tiny internal size: it runs, prints its table and writes the documented JSON."""

from __future__ import annotations

import pytest

import json

import torch

from bench.run import JSON_KEYS, RATIO_KEYS, format_table, ratios, table_rows, targets
from core.__main__ import main
from core.training.runtime import resolve


@pytest.mark.slow
def test_bench_tiny_runs_end_to_end_and_writes_the_documented_json(tmp_path, capsys, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the generated files go, to check they are deleted
    out = tmp_path / "bench.json"
    assert main(["bench", "--tiny", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(JSON_KEYS) <= set(result) and result["schema"] == 1 and result["mode"] == "tiny"
    assert set(RATIO_KEYS) == set(result["ratios"]) and all(v > 0 for v in result["ratios"].values())
    m = result["machine"]
    assert m["device"] == "cpu" and m["cpu_count"] >= 1 and m["torch"] and m["torchvision"]
    pre, train, proto = result["preprocess"], result["train"], result["protocol"]
    assert pre["naive_s"] > 0 and pre["ours_parallel_s"] > 0 and pre["max_abs_diff_vs_naive"] < 32
    assert train["ours"]["img_per_s"] > 0 and train["baseline_files"]["img_per_s"] > 0 and train["baseline_resized"]["img_per_s"] > 0
    assert train["ours"]["precision"] == resolve(torch.device("cpu")).precision  # auto: bf16 where the CPU has it
    assert train["baseline_files"]["precision"] == "fp32"
    assert proto["scaled_down"] and "SCALED DOWN" in proto["note"] and proto["seconds"] > 0 and proto["weights"] == "none"
    maps = result["heatmaps"]  # the engine's maps are the library's, whichever is faster
    assert maps["ours"]["img_per_s"] > 0 and maps["library"]["img_per_s"] > 0 and maps["max_abs_diff"] < 1e-3
    # no target is judged from tiny sizes, and the GPU ones say why they are not measured
    assert all(t["met"] is None for t in result["targets"])
    assert "pre-processing, cold cache" in printed and "heat maps, 2 targets" in printed and "SCALED DOWN" in printed and "ours / baseline" in printed
    assert not list(tmp_path.glob("cxr-bench-*"))  # generated images, caches and the throw-away store are gone


def test_table_columns_line_up():
    text = format_table([["part", "ours"], ["(a) x", "1.0 img/s"]])
    assert text.splitlines()[1].startswith("-----")


def _gpu_result() -> tuple[dict, dict, dict, dict, dict]:
    """A full-mode result as a GPU run fills it (made-up figures: what is tested is how they are judged and shown)."""
    speed = lambda v, folds=1: {"img_per_s": v, "folds_at_once": folds, "precision": "bf16"}  # noqa: E731
    train = {"ours": speed(2900.0), "ours_folds_together": speed(3800.0, 10), "ours_folds_together_read_at_once": speed(3600.0, 10),
             "baseline_files": speed(100.0), "baseline_resized": speed(800.0)}
    pre = {"naive_s": 10.0, "ours_parallel_s": 1.0, "ours_cached_s": 0.1, "ours_serial_s": 5.0, "naive_img_per_s": 20.0,
           "ours_parallel_img_per_s": 200.0, "ours_serial_img_per_s": 40.0, "ours_cached_img_per_s": 2000.0}
    maps = {"ours": {"img_per_s": 500.0}, "library": {"img_per_s": 100.0}}
    proto = {"seconds": 40.0, "train_seconds": 18.0, "scaled_down": False}
    return pre, train, proto, ratios(pre, train, maps), maps


@pytest.mark.parametrize(("name", "judged"), [("NVIDIA H200", True), ("NVIDIA H100 80GB HBM3", False)])
def test_gpu_targets_are_measured_on_any_gpu_and_judged_on_an_h200(monkeypatch, name, judged):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
    pre, train, proto, r, maps = _gpu_result()
    found = {t["name"]: t for t in targets("full", torch.device("cuda"), r, train, proto)}
    through = found["H200: training vs plain PyTorch"]
    assert through["measured"] == pytest.approx(3800 / 800)  # the faster of one fold and folds together
    assert found["H200: paper protocol end to end"]["met"] is (True if judged else None)
    assert through["met"] is (False if judged else None)
    assert judged or all(name in t["note"] for n, t in found.items() if n.startswith("H200"))
    assert all(t["met"] is None for t in targets("quick", torch.device("cuda"), r, train, proto) if t["name"].startswith("H200"))


def test_the_table_shows_what_reading_losses_late_and_the_heat_maps_gain():
    pre, train, proto, r, maps = _gpu_result()
    rows = {row[0]: row for row in table_rows(pre, train, proto, r, maps)}
    assert rows["(b) 10 folds, loss read a step late, vs at once"][1:] == ["3800.0 img/s", "3600.0 img/s", "1.06x"]
    assert rows["(d) heat maps, 2 targets, vs pytorch-grad-cam"][1:] == ["500.0 img/s", "100.0 img/s", "5.00x"]
