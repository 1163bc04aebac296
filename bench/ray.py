"""`python -m core bench --ray`: what running a sweep through Ray costs against the local executor, on one machine.

The load (issue 16's target): a sweep of 2 settings (learning_rate 1e-3 and 3e-4) x 5 folds, the quick preset
(ResNet-18, 64 px, 50 iterations of 32 images per fold, Grad-CAM on), weights none, on the synthetic demo
phantom (400 images, generated first and decoded once into the cache before either is timed). Timed: the
whole `run_sweep` call, once with executor=local (one fold after another, every core for each) and once with
executor=ray on a private Ray instance started inside the timed part (one fold per CPU, a thread each), each
into a fresh store. The ratio ray / local is the figure judged: at most 1.15 (Ray's overhead at most 15 %).
`--tiny` (tests): 2 folds of 2 iterations at 32 px, on whatever Ray instance the process already has.

JSON keys: `kind` ("ray"), `load`, `local_s`, `ray_s`, `ratio`, `target_ratio`, `met`, `auc_local`, `auc_ray`,
`max_abs_prob_diff` (the two sweeps' out-of-fold probabilities; they differ only by thread count's rounding),
`cluster` ("ray: N nodes, C CPUs, G GPUs"), `load_before`, `load_after`, `machine`.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def run_ray_bench(*, tiny: bool = False, out: Path | None = None, log=print) -> dict:
    from core.config import preset
    from core.data.phantom import make_demo_dataset
    from core.data.prepare import prepare_data
    from core.results.store import Store
    from core.training.sweep import parse_grid, run_sweep

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cxr-bench-ray-") as tmp:
        work = Path(tmp)
        data = work / "demo"
        make_demo_dataset(data, n_per_class=20 if tiny else 200, size=64 if tiny else 256, seed=0)
        base = preset("quick").replace(data=str(data), weights="none")
        if tiny:
            base = base.replace(image_size=32, folds=2, max_iterations=2, batch_size=8, gradcam=False)
        grid = parse_grid(["learning_rate=1e-3,3e-4"])
        os.environ["CXR_CACHE_DIR"] = str(work / "cache")  # a cache of its own, warmed before timing
        prepare_data(base, cache_dir=work / "cache")
        load = (f"sweep of 2 settings (learning_rate 1e-3, 3e-4) x {base.folds} folds, quick preset "
                f"({base.backbone}, {base.image_size} px, {base.max_iterations} iterations x {base.batch_size} images per fold, "
                f"Grad-CAM {'on' if base.gradcam else 'off'}), weights none, {len(list(data.rglob('*.png')))} demo images")
        log(f"load: {load}")
        timings, results = {}, {}
        for executor in ("local", "ray"):
            store = Store(work / executor)
            t0 = time.perf_counter()
            _, results[executor] = run_sweep(base.replace(executor=executor), grid, store=store, preset="quick")
            timings[executor] = time.perf_counter() - t0
            log(f"{executor}: {timings[executor]:.1f} s")
        cluster = Store(work / "ray").run(results["ray"][0].run_id)["device"].split(";")[0]  # "ray: 1 node, 2 CPUs, 0 GPUs"
        diffs = []
        for a, b in zip(results["local"], results["ray"]):
            pa, pb = Store(work / "local").predictions(a.run_id), Store(work / "ray").predictions(b.run_id)
            diffs.append(float(np.abs(pa["prob_positive"].to_numpy() - pb["prob_positive"].to_numpy()).max()))
        os.environ.pop("CXR_CACHE_DIR", None)
    ratio = timings["ray"] / timings["local"]
    result = {
        "kind": "ray", "load": load, "local_s": timings["local"], "ray_s": timings["ray"], "ratio": ratio, "target_ratio": 1.15,
        "met": ratio <= 1.15, "auc_local": [r.metrics["auc"] for r in results["local"]], "auc_ray": [r.metrics["auc"] for r in results["ray"]],
        "max_abs_prob_diff": max(diffs), "cluster": cluster, "load_before": load_before, "load_after": os.getloadavg(),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=1))
    return result


def report(result: dict) -> str:
    lines = [
        f"Ray against the local executor ({result['load']})",
        f"  local executor: {result['local_s']:.1f} s",
        f"  Ray ({result['cluster']}): {result['ray_s']:.1f} s",
        f"  ratio ray / local: {result['ratio']:.3f} (target at most {result['target_ratio']}: {'met' if result['met'] else 'NOT met'})",
        f"  pooled AUC local {', '.join(f'{a:.4f}' for a in result['auc_local'])}; ray {', '.join(f'{a:.4f}' for a in result['auc_ray'])}; "
        f"largest out-of-fold probability difference {result['max_abs_prob_diff']:.2g} (threads: rounding)",
        f"  load average before {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f}",
    ]
    return "\n".join(lines)
