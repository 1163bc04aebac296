"""`python -m core bench --ray`: what running a sweep through Ray costs against the local executor, on one machine.

The load (issue 16's target): a sweep of 2 settings (learning_rate 1e-3 and 3e-4) x 5 folds, the quick preset
(ResNet-18, 64 px, 50 iterations of 32 images per fold, Grad-CAM on), weights none, on the synthetic demo
phantom (400 images, generated first and decoded once into the cache before either is timed). Timed: the
whole `run_sweep` call, each into a fresh store, three times:
- executor=local: one fold after another, every core for each (torch threads = physical cores);
- executor=ray with `cpus_per_fold` = the machine's CPUs: one fold at a time with as many threads, so the same
  arithmetic as the local run (same predictions) and the difference is Ray's own cost (starting a private
  instance inside the timed part, shipping the data set, the tasks, the progress actor). Its ratio to the local
  run is the figure judged: at most 1.15 (Ray's overhead at most 15 %);
- executor=ray with the default `cpus_per_fold=1`: one fold per CPU, a thread each, as a cluster would run it.
  Other thread counts sum in other orders, and a model trained from scratch for 50 iterations ends elsewhere
  (its AUC moves as much as with another seed), so these predictions are not compared with the local ones.
`--tiny` (tests): 2 folds of 2 iterations at 32 px, on whatever Ray instance the process already has.

JSON keys: `kind` ("ray"), `load`, `local_s`, `ray_s` (same threads), `ratio` (ray_s / local_s, judged), `target_ratio`,
`met`, `ray_per_cpu_s` and `ratio_per_cpu` (cpus_per_fold=1), `auc_local`, `auc_ray`, `auc_ray_per_cpu`,
`max_abs_prob_diff` (local against Ray at the same threads: out-of-fold probabilities),
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
        n_images = len(prepare_data(base, cache_dir=work / "cache").labels)
        load = (f"sweep of 2 settings (learning_rate 1e-3, 3e-4) x {base.folds} folds, quick preset "
                f"({base.backbone}, {base.image_size} px, {base.max_iterations} iterations x {base.batch_size} images per fold, "
                f"Grad-CAM {'on' if base.gradcam else 'off'}), weights none, {n_images} demo images")
        log(f"load: {load}")
        timings, results = {}, {}
        cpus = os.cpu_count() or 1
        import ray

        if ray.is_initialized():  # an instance this process already has (the tests'): what it was given
            cpus = int(ray.cluster_resources().get("CPU", cpus))
        variants = {"local": base, "ray": base.replace(executor="ray", cpus_per_fold=float(cpus), num_threads=cpus),
                    "ray_per_cpu": base.replace(executor="ray", cpus_per_fold=1.0)}
        for name, cfg in variants.items():
            store = Store(work / name)
            t0 = time.perf_counter()
            _, results[name] = run_sweep(cfg, grid, store=store, preset="quick")
            timings[name] = time.perf_counter() - t0
            log(f"{name}: {timings[name]:.1f} s")
        cluster = Store(work / "ray").run(results["ray"][0].run_id)["device"].split(";")[0]  # "ray: 1 node, 2 CPUs, 0 GPUs"
        diffs = []
        for a, b in zip(results["local"], results["ray"]):
            pa, pb = Store(work / "local").predictions(a.run_id), Store(work / "ray").predictions(b.run_id)
            diffs.append(float(np.abs(pa["prob_positive"].to_numpy() - pb["prob_positive"].to_numpy()).max()))
        os.environ.pop("CXR_CACHE_DIR", None)
    ratio = timings["ray"] / timings["local"]
    result = {
        "kind": "ray", "load": load, "local_s": timings["local"], "ray_s": timings["ray"], "ratio": ratio, "target_ratio": 1.15,
        "met": ratio <= 1.15, "ray_per_cpu_s": timings["ray_per_cpu"], "ratio_per_cpu": timings["ray_per_cpu"] / timings["local"],
        "auc_local": [r.metrics["auc"] for r in results["local"]], "auc_ray": [r.metrics["auc"] for r in results["ray"]],
        "auc_ray_per_cpu": [r.metrics["auc"] for r in results["ray_per_cpu"]],
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
        f"  Ray ({result['cluster']}), one fold at a time with all CPUs: {result['ray_s']:.1f} s",
        f"  ratio ray / local: {result['ratio']:.3f} (Ray's overhead; target at most {result['target_ratio']}: "
        f"{'met' if result['met'] else 'NOT met'})",
        f"  Ray, one fold per CPU (cpus_per_fold=1): {result['ray_per_cpu_s']:.1f} s, ratio {result['ratio_per_cpu']:.3f}",
        f"  pooled AUC local {', '.join(f'{a:.4f}' for a in result['auc_local'])}; ray {', '.join(f'{a:.4f}' for a in result['auc_ray'])} "
        f"(largest out-of-fold probability difference {result['max_abs_prob_diff']:.2g}); ray per CPU "
        f"{', '.join(f'{a:.4f}' for a in result['auc_ray_per_cpu'])} (other threads, other models)",
        f"  load average before {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f}",
    ]
    return "\n".join(lines)
