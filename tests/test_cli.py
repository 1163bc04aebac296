"""The command line as a user runs it: a run id on stdout, one-line reasons and non-zero codes on failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.results.store import Store

from conftest import blob_dataset

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


TINY = ["--set", "image_size=32", "--set", "max_iterations=2", "--set", "folds=2", "--set", "batch_size=8", "--no-progress"]


@pytest.mark.slow
def test_run_prints_the_run_id_and_stores_it(tmp_path):
    data = blob_dataset(tmp_path / "d", n_per_class=6)
    done = cli("run", "--preset", "quick", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), *TINY, env={"TORCH_HOME": str(tmp_path / "th")})
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    assert Store(tmp_path / "runs").run(run_id)["status"] == "finished"
    # quick works offline: it says it trains from scratch because ImageNet weights are not cached
    assert "not cached" in done.stderr and "from scratch" in done.stderr


@pytest.mark.slow
def test_runs_dir_can_come_from_the_environment(tmp_path):
    data = blob_dataset(tmp_path / "d", n_per_class=6)
    done = cli("run", "--data", str(data), *TINY, env={"CXR_RUNS_DIR": str(tmp_path / "envruns"), "TORCH_HOME": str(tmp_path / "th")})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "envruns" / "runs.duckdb").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "learning_rate=-1"], "learning_rate must be greater than 0"),
        (["--set", "nonsense=1"], "unknown setting 'nonsense'"),
        (["--preset", "paper", "--set", "folds=2"], "ImageNet weights for resnet50 are not available offline"),
    ],
)
@pytest.mark.slow
def test_failures_exit_non_zero_with_one_line(tmp_path, args, message, monkeypatch):
    data = blob_dataset(tmp_path / "d", n_per_class=4)
    # An unroutable proxy makes any download attempt fail fast, whatever network this machine has.
    env = {"TORCH_HOME": str(tmp_path / "th"), "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    done = cli("run", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--no-progress", *args, env=env)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_missing_data_is_reported(tmp_path):
    done = cli("run", "--data", str(tmp_path / "nope"), "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 2 and "does not exist" in done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--data", "DATA", "--set", "nonsense=1"], "unknown setting 'nonsense'"),
        (["run", "--data", "DATA", "--set", "learning_rate=-1"], "learning_rate must be greater than 0"),
        (["run", "--data", "MISSING"], "does not exist"),
        (["sweep", "--data", "DATA", "--grid", "learning_rate=0.1,-1"], "learning_rate must be greater than 0"),
        (["sweep", "--data", "MISSING", "--grid", "learning_rate=0.1,0.2"], "does not exist"),
        (["resume", "no-such-run"], "no run 'no-such-run'"),
        (["run", "--config", "NOTJSON"], "is not a configuration written by RunConfig.to_json()"),
        (["run", "--config", "MISSING"], "cannot read --config"),
        (["run", "--config", "BADCONFIG"], "learning_rate must be greater than 0"),
        (["run", "--preset", "quick"], "give the data with --data"),
    ],
)
@pytest.mark.slow
def test_mistakes_are_answered_before_the_engine_loads_torch(tmp_path, args, message):
    """Importing torch and torchvision takes seconds; a typo should not wait for it."""
    data = blob_dataset(tmp_path / "d", n_per_class=2)
    (tmp_path / "not.json").write_text("folds = 3")
    (tmp_path / "bad.json").write_text('{"learning_rate": -1, "data": "x"}')
    files = {"DATA": str(data), "MISSING": str(tmp_path / "nope"), "NOTJSON": str(tmp_path / "not.json"), "BADCONFIG": str(tmp_path / "bad.json")}
    argv = [files.get(a, a) for a in args]
    probe = ("import sys; from core.__main__ import main; code = main(sys.argv[1:]); "
             "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded'); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, *argv, "--runs-dir", str(tmp_path / "runs")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stdout.strip() == "torch not loaded"


@pytest.mark.slow
def test_a_background_job_gets_the_whole_typed_config_as_json_and_runs_it(tmp_path, monkeypatch):
    """The Train page's RunConfig reaches the job process whole (a JSON file, no field=value strings) and is what it stores."""
    from core.jobs import launch as jobs
    from core.__main__ import get_args_parser
    from core.config import preset

    data = blob_dataset(tmp_path / "d", n_per_class=6)
    cfg = preset("quick").replace(data=str(data), image_size=32, max_iterations=2, folds=2, batch_size=8, learning_rate=3e-4,
                                  augment=False)
    spawned = []
    monkeypatch.setattr(jobs, "_spawn", lambda args, **kw: spawned.append(args) or 4321)
    run_id, pid = jobs.start_run(cfg, runs_dir=tmp_path / "runs", preset="quick", name="from the page")
    args = spawned[0]
    assert pid == 4321 and "--set" not in args and "--data" not in args
    config_file = Path(args[args.index("--config") + 1])
    assert config_file == tmp_path / "runs" / "jobs" / f"{run_id}.config.json"
    parsed = get_args_parser().parse_args(args)
    assert parsed.run_id == run_id and parsed.label_preset == "quick" and parsed.name == "from the page"

    done = cli(*args, env={"TORCH_HOME": str(tmp_path / "th")})  # what the job process runs
    assert done.returncode == 0, done.stderr
    stored = Store(tmp_path / "runs").run_record(run_id)
    assert stored.config == cfg and stored.preset == "quick" and stored.name == "from the page" and stored.status == "finished"


def test_settings_lists_every_field_with_help():
    done = cli("settings", "--preset", "paper")
    assert done.returncode == 0 and "head_lr_factor = 10.0" in done.stdout and "WeightLearnRateFactor" in done.stdout


@pytest.mark.slow
def test_predict_prints_json_for_an_image(tmp_path):
    import json

    data = blob_dataset(tmp_path / "d", n_per_class=6)
    env = {"TORCH_HOME": str(tmp_path / "th")}
    done = cli("run", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), *TINY, "--set", "save_models=true", env=env)
    assert done.returncode == 0, done.stderr
    image = sorted((data / "Effusion").glob("*.png"))[0]
    out = cli("predict", done.stdout.strip(), str(image), "--runs-dir", str(tmp_path / "runs"), env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["positive_class"] == "Effusion" and len(result["fold_probs"]) == 2 and 0 <= result["prob_positive"] <= 1
    bad = cli("predict", done.stdout.strip(), str(tmp_path / "nope.png"), "--runs-dir", str(tmp_path / "runs"), env=env)
    assert bad.returncode == 2 and "file not found" in bad.stderr
