"""The benchmark's machinery (`python -m core bench`) at a tiny internal size: it runs, prints its table and writes the documented JSON."""

from __future__ import annotations

import pytest

import json

import torch

from bench.run import JSON_KEYS, RATIO_KEYS, format_table
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
    # no target is judged from tiny sizes, and the GPU ones say why they are not measured
    assert all(t["met"] is None for t in result["targets"])
    assert "pre-processing, cold cache" in printed and "SCALED DOWN" in printed and "ours / baseline" in printed
    assert not list(tmp_path.glob("cxr-bench-*"))  # generated images, caches and the throw-away store are gone


def test_table_columns_line_up():
    text = format_table([["part", "ours"], ["(a) x", "1.0 img/s"]])
    assert text.splitlines()[1].startswith("-----")
