"""Command line: `python -m core demo-data|cohort|run|resume|sweep|report|export|predict|weights|runs|settings|bench ...`.

stdout carries only the result a script wants (a run id, a path, a table); progress bars,
notices and errors go to stderr. Exit codes: 0 success, 2 a problem the user can fix (one
line saying what to do), 1 an internal error, 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from core import CxrError


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="cxr-transfer: k-fold transfer learning on chest radiographs")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-data", help="write the synthetic chest-radiograph demo data set")
    demo.add_argument("--out", required=True, type=Path, help="folder to write (created; a previous demo set there is replaced)")
    demo.add_argument("--n-per-class", type=int, default=200, help="images per class (default 200)")
    demo.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    demo.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same images")

    cohort = sub.add_parser("cohort", help="select a cohort from MIMIC-CXR-JPG, CheXpert or NIH ChestX-ray14 into a CSV manifest")
    cohort.add_argument("source", choices=["mimic", "chexpert", "nih"], help="which release ROOT holds")
    cohort.add_argument("root", type=Path, help="the release folder (MIMIC: the one holding files/; CheXpert: the dataset folder "
                                                  "or its parent; NIH: the one holding Data_Entry_2017.csv and images*/)")
    cohort.add_argument("--out", required=True, type=Path, help="manifest CSV to write; the cohort flow goes to <stem>.flow.json next to it")
    cohort.add_argument("--finding", default="Pleural Effusion", help="finding(s), comma-separated, one class each (default 'Pleural Effusion')")
    cohort.add_argument("--normal", default="No Finding", help="the normal class's label ('' = none; default 'No Finding')")
    cohort.add_argument("--uncertain", choices=["exclude", "positive", "negative"], default="exclude",
                        help="uncertain (-1) labels of a chosen finding: exclude the image (default) or count them as positive/negative")
    cohort.add_argument("--views", default="PA,AP", help="views to keep, comma-separated, or 'all' (default PA,AP)")
    cohort.add_argument("--n-per-class", type=int, default=500, help="images sampled per class (default 500; 0 = all)")
    cohort.add_argument("--seed", type=int, default=0, help="sampling seed; the same seed gives the same cohort")
    cohort.add_argument("--one-per-patient", action="store_true", help="keep one image per patient (chosen with --seed)")
    cohort.add_argument("--split", choices=["all", "train", "validate", "test"], default="all", help="the release's official split (default all)")
    cohort.add_argument("--multi-finding", choices=["exclude", "first"], default="exclude",
                        help="images with more than one chosen finding: exclude (default) or the first in --finding order")
    cohort.add_argument("--patients", type=Path, default=None, metavar="PATH",
                        help="MIMIC-CXR: MIMIC-IV's hosp/patients.csv(.gz), for sex and age band (subgroups); CheXpert and NIH carry them")
    cohort.add_argument("--labels-dir", type=Path, default=None, help="folder holding the label/metadata CSVs when they are not in ROOT")

    run = sub.add_parser("run", help="cross-validate one configuration and store it")
    run.add_argument("--preset", default="quick", help="paper (the study's protocol) or quick (a 2-core CPU demo); default quick")
    run.add_argument("--data", default=None, help="demo folder, folder of class sub-folders, or CSV manifest (required unless --config has it)")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE", help="override a setting (repeatable); see --list-settings")
    run.add_argument("--config", type=Path, default=None, metavar="FILE",
                     help="a whole configuration as JSON (RunConfig.to_json(), as background jobs get it), instead of --preset; --data and --set override it")
    _common(run)
    run.add_argument("--name", default="", help="a human name for the run")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="where to train (default: the preset's, auto)")
    run.add_argument("--executor", choices=["local", "ray"], default=None,
                     help="local (this process; default) or ray: every fold a Ray task on a cluster's CPUs and GPUs")
    run.add_argument("--ray-address", default=None, metavar="ADDRESS",
                     help="with --executor ray: '' (default) starts a private Ray instance here; auto or HOST:PORT joins a cluster")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    run.add_argument("--run-id", default=None, help=argparse.SUPPRESS)  # set by background jobs that need the id up front
    run.add_argument("--label-preset", default=None, help=argparse.SUPPRESS)  # the preset name to store, when --set carries all fields

    resume = sub.add_parser("resume", help="continue an interrupted, failed or cancelled run from its first unfinished fold")
    resume.add_argument("run_id", help="the run to continue (same id, config and splits; finished folds are kept)")
    _common(resume)
    resume.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="where to train the remaining folds (default: the run's)")
    resume.add_argument("--executor", choices=["local", "ray"], default=None,
                     help="local (this process; default) or ray: every fold a Ray task on a cluster's CPUs and GPUs (default: the run's own)")
    resume.add_argument("--ray-address", default=None, metavar="ADDRESS",
                     help="with --executor ray: '' (default) starts a private Ray instance here; auto or HOST:PORT joins a cluster")
    resume.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")

    sweep = sub.add_parser("sweep", help="run the product of a grid of settings on identical splits")
    sweep.add_argument("--preset", default="quick", help="base preset (default quick)")
    sweep.add_argument("--data", default=None, help="demo folder, folder of class sub-folders, or CSV manifest (required unless --config has it)")
    sweep.add_argument("--config", type=Path, default=None, metavar="FILE", help="the base configuration as JSON, instead of --preset")
    sweep.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...", help="values to sweep (repeatable; runs the product)")
    sweep.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE", help="fixed override for every run")
    _common(sweep)
    sweep.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    sweep.add_argument("--executor", choices=["local", "ray"], default=None,
                     help="local (this process; default) or ray: every fold a Ray task on a cluster's CPUs and GPUs; all the runs' folds in one pool")
    sweep.add_argument("--ray-address", default=None, metavar="ADDRESS",
                     help="with --executor ray: '' (default) starts a private Ray instance here; auto or HOST:PORT joins a cluster")
    sweep.add_argument("--no-progress", action="store_true")
    sweep.add_argument("--sweep-id", default=None, help=argparse.SUPPRESS)  # set by background jobs that need the id up front
    sweep.add_argument("--label-preset", default=None, help=argparse.SUPPRESS)

    report = sub.add_parser("report", help="the study's Table 3 for runs or a sweep, with intervals and DeLong p-values")
    report.add_argument("run_ids", nargs="*", help="runs to compare; the first is the reference row")
    report.add_argument("--sweep", default=None, help="report every finished run of this sweep id")
    report.add_argument("--format", choices=["md", "json", "html"], default="md")
    report.add_argument("--min-sensitivity", type=float, default=0.9, help="operating point: the highest threshold with at least this sensitivity")
    _common(report)

    export = sub.add_parser("export", help="a self-contained HTML report of a run, or a comparison of several runs, for clinicians")
    export.add_argument("run_ids", nargs="+", help="one run (a run report) or several (a comparison; the first is the reference)")
    export.add_argument("--out", required=True, type=Path, help="HTML file to write")
    export.add_argument("--cams", type=int, default=8, help="Grad-CAM examples per run (0 = none; default 8)")
    _common(export)

    predict = sub.add_parser("predict", help="classify one image with a finished run's fold models (needs save_models=true)")
    predict.add_argument("run_id")
    predict.add_argument("image", type=Path, help="PNG, JPEG or DICOM")
    predict.add_argument("--threshold", type=float, default=0.5)
    _common(predict)

    validate = sub.add_parser("validate", help="external validation: a finished run's fold models on another data set with the same classes")
    validate.add_argument("run_id", help="a finished run that kept its fold models (save_models=true)")
    validate.add_argument("--data", required=True, help="the other data set: a demo folder, class folders or a CSV manifest")
    validate.add_argument("--name", default="", help="a name for the evaluation (default: the data folder's name)")
    validate.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                          help="data settings of the other data set (path_column, label_column, positive_labels, subgroup_columns, ...)")
    validate.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)
    _common(validate)

    study = sub.add_parser("study", help="reader studies: create one from a run, export it to read elsewhere, import reads back")
    study_sub = study.add_subparsers(dest="study_command", required=True)
    create = study_sub.add_parser("create", help="a seeded sample of a finished run's images, stratified by class; prints its id")
    create.add_argument("run_id")
    create.add_argument("--images", type=int, default=20, help="images in the study (default 20, half of each class)")
    create.add_argument("--seed", type=int, default=0)
    create.add_argument("--name", default="")
    create.add_argument("--no-aided", action="store_true", help="no aided session (model shown) after the unaided one")
    _common(create)
    study_export = study_sub.add_parser("export", help="the study with its pictures and reads as one JSON file")
    study_export.add_argument("study_id")
    study_export.add_argument("--out", type=Path, required=True)
    _common(study_export)
    study_import = study_sub.add_parser("import", help="create the study from its file if needed, then merge the file's reads")
    study_import.add_argument("file", type=Path)
    _common(study_import)
    study_list = study_sub.add_parser("list", help="the studies in the store")
    _common(study_list)

    reader_report = sub.add_parser("reader-report", help="a reader study's statistics: readers against the model, aided against unaided")
    reader_report.add_argument("study_id")
    reader_report.add_argument("--format", choices=["md", "json", "html"], default="md")
    _common(reader_report)

    review = sub.add_parser("review-tags", help="a run's review tags as CSV (image, truth, probability, reviewer, tag, note)")
    review.add_argument("run_id")
    _common(review)

    cluster = sub.add_parser("cluster", help="the Ray cluster's nodes, CPUs and GPUs, in all and free now, as JSON (for --executor ray)")
    cluster.add_argument("--ray-address", default="", metavar="ADDRESS",
                         help="auto or HOST:PORT of a running cluster; '' (default) starts a private instance here to show this machine")

    weights = sub.add_parser("weights", help="fetch ImageNet weights into torch hub's cache, or list which are there")
    weights_sub = weights.add_subparsers(dest="weights_command", required=True)
    download = weights_sub.add_parser("download", help="download a backbone's ImageNet weights (checksum checked)")
    download.add_argument("backbone", help="resnet18, resnet50, ... (python -m core settings lists them); 'all' for every one")
    download.add_argument("--url", default=None, help="a mirror serving torchvision's weights file under its own name")
    download.add_argument("--no-progress", action="store_true")
    weights_sub.add_parser("list", help="which backbones have ImageNet weights cached, and where")

    runs = sub.add_parser("runs", help="list the runs in the store")
    _common(runs)

    settings = sub.add_parser("settings", help="list every setting with its preset value and help")
    settings.add_argument("--preset", default="paper")

    bench = sub.add_parser("bench", help="time pre-processing, training throughput and the paper protocol against plain baselines")
    bench.add_argument("--quick", action="store_true", help="scaled down for a CPU (under 2 minutes on 2 cores); default: the study's sizes")
    bench.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    bench.add_argument("--out", type=Path, default=None, help="write the results as JSON to this file")
    bench.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # a few seconds, for tests
    bench.add_argument("--dashboard", action="store_true",
                       help="time the dashboard's pages on a generated heavy user's store instead (bench/dashboard.py)")
    bench.add_argument("--ray", action="store_true",
                       help="time a sweep (2 settings x 5 folds, quick preset) through a private Ray instance against the local executor")
    bench.add_argument("--runs", type=int, default=2500, help="--dashboard: finished runs in the store (default 2500)")
    bench.add_argument("--predictions", type=int, default=1_000_000,
                       help="--dashboard: out-of-fold predictions in all, spread over the runs (default 1000000)")
    bench.add_argument("--app-root", type=Path, default=None,
                       help="--dashboard: time the pages (and core) of this checkout instead of this one, e.g. an older commit's worktree")
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", type=Path, default=None, help="where runs.duckdb and artifacts live (default $CXR_RUNS_DIR or runs/)")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return {"demo-data": cmd_demo_data, "cohort": cmd_cohort, "run": cmd_run, "resume": cmd_resume, "sweep": cmd_sweep, "report": cmd_report, "export": cmd_export, "predict": cmd_predict, "runs": cmd_runs,
                "settings": cmd_settings, "bench": cmd_bench, "weights": cmd_weights,
                "cluster": cmd_cluster, "validate": cmd_validate, "study": cmd_study, "reader-report": cmd_reader_report,
                "review-tags": cmd_review_tags}[args.command](args)
    except CxrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled: finished folds are kept in the store", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback when asked for
        if os.environ.get("CXR_DEBUG"):
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc}); rerun with CXR_DEBUG=1 for the traceback", file=sys.stderr)
        return 1


def cmd_demo_data(args: argparse.Namespace) -> int:
    from core.data.phantom import make_demo_dataset

    with _bar(total=2 * args.n_per_class, desc="demo images", disable=False) as bar:
        try:
            manifest = make_demo_dataset(args.out, n_per_class=args.n_per_class, size=args.size, seed=args.seed,
                                         progress=lambda done, total: bar.update(done - bar.n))
        except ValueError as exc:
            raise CxrError(str(exc)) from None
    print(f"wrote {2 * args.n_per_class} SYNTHETIC images (not real radiographs) to {args.out}", file=sys.stderr)
    print(manifest.parent)
    return 0


def cmd_cohort(args: argparse.Namespace) -> int:
    from core.data.cohorts import CohortError, CohortOptions, build_cohort, check_out, format_flow, parse_list, parse_views, write_cohort

    check_out(args.out)  # before reading a large release
    options = CohortOptions(findings=parse_list(args.finding), normal=args.normal.strip(), uncertain=args.uncertain, views=parse_views(args.views),
                            n_per_class=args.n_per_class, seed=args.seed, one_per_patient=args.one_per_patient, split=args.split,
                            multi_finding=args.multi_finding, patients=str(args.patients) if args.patients else "")
    try:
        cohort = build_cohort(args.source, args.root, options, labels_dir=args.labels_dir)
    except CohortError as exc:
        print(format_flow(exc.flow), file=sys.stderr)
        raise
    manifest, flow = write_cohort(cohort, args.out)
    print(format_flow(cohort.flow), file=sys.stderr)
    print(f"wrote {len(cohort.table)} images to {manifest} and the cohort flow to {flow}; train with: "
          f"python -m core run --data {manifest}", file=sys.stderr)
    print(manifest)
    return 0


def _config(args: argparse.Namespace):
    """The configuration of `run` and `sweep`: --config's JSON or --preset, then --data, --set and --device on top."""
    from core.config import RunConfig, apply_overrides, preset

    if args.config is not None:
        try:
            base = RunConfig.from_json(args.config.read_text())
        except OSError as exc:
            raise CxrError(f"cannot read --config {args.config}: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:  # not JSON, or not a configuration
            raise CxrError(f"--config {args.config} is not a configuration written by RunConfig.to_json(): {exc}") from None
    else:
        base = preset(args.preset)
    if args.data is None and not base.data:
        raise CxrError("give the data with --data (a demo folder, a folder of class sub-folders or a CSV manifest)")
    overrides = ([f"data={args.data}"] if args.data is not None else []) + args.sets + ([f"device={args.device}"] if args.device else [])
    overrides += _executor_overrides(args)
    return apply_overrides(base, overrides)


def _executor_overrides(args: argparse.Namespace) -> list[str]:
    """--executor and --ray-address as settings (they are RunConfig fields, so a resumed run keeps them)."""
    out = [f"executor={args.executor}"] if getattr(args, "executor", None) else []
    return out + ([f"ray_address={args.ray_address}"] if getattr(args, "ray_address", None) is not None else [])


def _stored_preset(args: argparse.Namespace) -> str:
    """The preset name a run is stored under: the job's label, the --preset used, or 'custom' for a --config."""
    return args.label_preset or ("custom" if args.config is not None else args.preset)


def cmd_run(args: argparse.Namespace) -> int:
    from core.data.sources import existing_data_path
    from core.results.store import Store, default_runs_dir

    # Settings and the data path are checked before the engine (torch, torchvision: seconds) is imported,
    # so a typo is answered at once.
    cfg = _config(args)
    existing_data_path(cfg.data)
    from core.training.engine import run_cross_validation

    store = Store(args.runs_dir or default_runs_dir())
    reporter = ProgressReporter(disable=args.no_progress)
    try:
        result = run_cross_validation(cfg, store=store, preset=_stored_preset(args), name=args.name, progress=reporter,
                                      run_id=args.run_id)
    finally:
        reporter.close()
    _print_result(result)
    return 0


def _print_result(result) -> None:
    """The pooled result on stderr, the run id alone on stdout (for scripts)."""
    m = result.metrics
    print(
        f"pooled out-of-fold: AUC {m['auc']:.4f}, accuracy {m['accuracy']:.3f}, sensitivity {m['sensitivity']:.3f}, "
        f"specificity {m['specificity']:.3f}; mean per-fold AUC {result.auc_mean_folds:.4f}; weights: {result.weights_used}",
        file=sys.stderr,
    )
    print(result.run_id)


def cmd_resume(args: argparse.Namespace) -> int:
    from core.jobs.lifecycle import check_resumable, mark_interrupted
    from core.results.store import Store, default_runs_dir

    store = Store(args.runs_dir or default_runs_dir())
    if store.path.exists():
        mark_interrupted(store)
    check_resumable(store, args.run_id)  # a wrong id or a finished run is answered before torch is imported
    from core.training.engine import resume_cross_validation

    reporter = ProgressReporter(disable=args.no_progress)
    try:
        result = resume_cross_validation(store, args.run_id, device=args.device, progress=reporter, overrides=_executor_overrides(args))
    finally:
        reporter.close()
    _print_result(result)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from core.data.sources import existing_data_path
    from core.results.store import Store, default_runs_dir
    from core.training.sweep import expand, parse_grid

    # As for `run`: every combination's settings and the data path are checked before the engine is imported.
    grid = parse_grid(args.grid)
    cfg = _config(args)
    expand(cfg, grid)
    existing_data_path(cfg.data)
    from core.training.sweep import run_sweep

    reporter = ProgressReporter(disable=args.no_progress)
    try:
        sweep_id, results = run_sweep(cfg, grid, store=Store(args.runs_dir or default_runs_dir()), preset=_stored_preset(args),
                                      progress=reporter, sweep_id=args.sweep_id)
    finally:
        reporter.close()
    print(f"sweep {sweep_id}: {len(results)} runs; show it with: python -m core report --sweep {sweep_id}", file=sys.stderr)
    print(sweep_id)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from core.results.report import sweep_run_ids, table3, to_html, to_json, to_markdown
    from core.results.store import Store, default_runs_dir

    store = Store(args.runs_dir or default_runs_dir())
    if bool(args.sweep) == bool(args.run_ids):
        raise CxrError("report takes run ids or --sweep ID (one of the two)")
    run_ids = sweep_run_ids(store, args.sweep) if args.sweep else args.run_ids
    if not 0 < args.min_sensitivity <= 1:
        raise CxrError("--min-sensitivity must be in (0, 1], e.g. 0.9")
    rows = table3(store, run_ids, min_sensitivity=args.min_sensitivity)
    print({"md": to_markdown, "json": to_json, "html": to_html}[args.format](rows), end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from core.results.export import comparison_report_html
    from core.results.store import default_runs_dir

    if not 0 <= args.cams <= 64:
        raise CxrError("--cams must be between 0 and 64")
    page = comparison_report_html(args.runs_dir or default_runs_dir(), args.run_ids, gallery_size=args.cams)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise CxrError(f"cannot write {args.out}: {exc.strerror}; choose another --out path") from None
    print(f"wrote {len(page) / 1e6:.1f} MB self-contained report of {len(args.run_ids)} run(s)", file=sys.stderr)
    print(args.out)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from core.data.decode import DecodeError, read_bytes
    from core.training.predict import predict_image
    from core.results.store import Store, default_runs_dir

    try:
        data = read_bytes(args.image)
    except DecodeError as exc:
        raise CxrError(f"{args.image}: {exc}") from None
    p = predict_image(Store(args.runs_dir or default_runs_dir()), args.run_id, data, threshold=args.threshold)
    print("research tool, not a diagnosis", file=sys.stderr)
    print(json.dumps({"run_id": args.run_id, "prob_positive": p.prob_positive, "positive_class": p.positive_class,
                      "call": p.call, "threshold": p.threshold, "fold_probs": p.fold_probs}))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from core.jobs.lifecycle import mark_interrupted
    from core.results.store import Store, default_runs_dir

    store = Store(args.runs_dir or default_runs_dir())
    if store.path.exists():
        _try(mark_interrupted, store)  # a run whose process died shows as interrupted (and can be resumed)
    runs = store.list_runs()
    if runs.empty:
        print("no runs yet; start one with: python -m core run --preset quick --data PATH", file=sys.stderr)
        return 0
    cols = ["run_id", "status", "preset", "n_images", "folds", "auc", "accuracy", "sensitivity", "specificity", "train_seconds", "weights_used"]
    print(runs[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if runs["status"].isin(["failed", "cancelled", "interrupted"]).any():
        print("continue an unfinished run with: python -m core resume RUN_ID", file=sys.stderr)
    return 0


def _try(action, *args) -> None:
    """Best effort: listing must work on a store this user can only read."""
    try:
        action(*args)
    except CxrError:
        pass


def cmd_bench(args: argparse.Namespace) -> int:
    if args.dashboard:
        return cmd_bench_dashboard(args)
    if args.ray:
        try:
            from bench.ray import report as ray_report, run_ray_bench
        except ImportError as exc:
            raise CxrError(f"the benchmark lives in bench/ of the repository ({exc}); run python -m core bench from the repository root") from None
        result = run_ray_bench(tiny=args.tiny, out=args.out, log=lambda line: print(line, file=sys.stderr))
        print(ray_report(result))
        return 0
    try:
        from bench.run import report, run_bench
    except ImportError as exc:
        raise CxrError(f"the benchmark lives in bench/ of the repository ({exc}); run python -m core bench from the repository root") from None

    result = run_bench("tiny" if args.tiny else "quick" if args.quick else "full", args.device, args.out)
    print(report(result))
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_bench_dashboard(args: argparse.Namespace) -> int:
    """`bench --dashboard`: the pages on a heavy user's store; `--tiny` (tests) times the Runs page alone on whatever size is asked."""
    try:
        from bench.dashboard import report, run_dashboard_bench
    except ImportError as exc:
        raise CxrError(f"the benchmark lives in bench/ of the repository ({exc}); run python -m core bench from the repository root") from None
    if args.runs < 1 or args.predictions < 2 * args.runs:
        raise CxrError("--runs must be at least 1 and --predictions at least 2 per run")
    if args.app_root is not None and not (args.app_root / "pages").is_dir():
        raise CxrError(f"--app-root {args.app_root} has no pages/ folder; give the root of a cxr-transfer checkout")
    tiny = {"pages": ("2_Runs.py",), "sessions": 1, "model_runs": 0} if args.tiny else {}
    result = run_dashboard_bench(runs=args.runs, predictions=args.predictions, app_root=args.app_root, out=args.out, **tiny)
    print(report(result))
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    """`weights download BACKBONE|all` prints each cached file's path on stdout; `weights list` a table."""
    from core.config import BACKBONES
    from core.training.models import download_imagenet, imagenet_cache_file

    if args.weights_command == "list":
        for name in BACKBONES:
            file = imagenet_cache_file(name)
            print(f"{name}\t{'cached' if file.is_file() else 'not cached'}\t{file}")
        return 0
    names = list(BACKBONES) if args.backbone == "all" else [args.backbone]
    if args.url and len(names) > 1:
        raise CxrError("--url names one file; give one backbone with it")
    for name in names:
        file = download_imagenet(name, url=args.url, progress=not args.no_progress)
        print(f"ImageNet weights for {name}: {file}", file=sys.stderr)
        print(file)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Prints the evaluation id on stdout, its figures against the run's out-of-fold ones on stderr."""
    from core.config import RunConfig, apply_overrides
    from core.data.sources import existing_data_path
    from core.results.store import Store, default_runs_dir

    existing_data_path(args.data)
    apply_overrides(RunConfig(), args.sets)  # a typo in a setting is answered before torch is imported
    from core.results.report import run_row
    from core.training.validate import validate_run

    store = Store(args.runs_dir or default_runs_dir())
    evaluation_id = validate_run(store, args.run_id, args.data, name=args.name, sets=args.sets)
    row, _, _ = run_row(store, args.run_id)
    ext = next(e for e in row["external"] if e["evaluation_id"] == evaluation_id)

    def auc(r):
        return "n/a" if r["auc"] is None else f"{100 * r['auc']:.2f} % ({100 * r['auc_ci_low']:.2f}-{100 * r['auc_ci_high']:.2f})"

    print(f"internal (out of fold): AUC {auc(row)}, {row['n_images']} images; external {ext['name']}: AUC {auc(ext)}, "
          f"{ext['n_images']} images, sensitivity {100 * ext['sensitivity']:.1f} %, specificity {100 * ext['specificity']:.1f} %"
          + ("" if ext["p_vs_internal"] is None else f"; p (external vs internal AUC) {ext['p_vs_internal']:.3g}"), file=sys.stderr)
    print(evaluation_id)
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from core.results.store import Store, default_runs_dir
    from core.review import studies

    store = Store(args.runs_dir or default_runs_dir())
    if args.study_command == "create":
        print(studies.create_study(store, args.run_id, n_images=args.images, seed=args.seed, name=args.name, aided=not args.no_aided))
    elif args.study_command == "export":
        args.out.write_bytes(studies.export_study(store, args.study_id))
        print(f"wrote {args.out}", file=sys.stderr)
    elif args.study_command == "import":
        if not args.file.is_file():
            raise CxrError(f"no file {args.file}")
        if args.file.stat().st_size > studies.MAX_FILE_BYTES:
            raise CxrError(f"{args.file} is larger than a study file can be ({studies.MAX_FILE_BYTES // 2**20} MiB)")
        result = studies.import_study(store, args.file.read_bytes())
        print(json.dumps(result))
    else:
        table = store.studies()
        print(table[["study_id", "name", "run_id", "n_images", "aided", "n_reads", "origin"]].to_string(index=False) if not table.empty
              else "no reader study yet: python -m core study create RUN_ID")
    return 0


def cmd_reader_report(args: argparse.Namespace) -> int:
    from core.results.store import Store, default_runs_dir
    from core.review import studies

    stats = studies.statistics(Store(args.runs_dir or default_runs_dir()), args.study_id)
    if args.format == "json":
        print(json.dumps(stats, indent=2))
    elif args.format == "html":
        print(studies.report_html(stats), end="")
    else:
        print(studies.report_markdown(stats), end="")
    return 0


def cmd_review_tags(args: argparse.Namespace) -> int:
    from core.results.store import Store, default_runs_dir
    from core.review.queue import tags_csv

    print(tags_csv(Store(args.runs_dir or default_runs_dir()), args.run_id), end="")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from core.training.ray_executor import cluster_summary, ray_session

    with ray_session(args.ray_address) as ray:
        print(json.dumps(cluster_summary(ray)))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from core.config import field_help, preset

    values = asdict(preset(args.preset))
    for name, help_text in field_help().items():
        print(f"{name} = {values[name]!r}\n    {help_text}")
    return 0


def _bar(**kw):
    from tqdm import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, **kw)


class ProgressReporter:
    """Turns engine events into tqdm bars (decoding, then one bar per fold) and one log line per fold."""

    def __init__(self, *, disable: bool) -> None:
        self.disable = disable
        self.bar = None
        self.loss = None
        self.lead = None  # the fold whose iterations move the bar

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "loading":
            if self.bar is None:
                self.bar = _bar(total=event["total"], desc="decoding", disable=self.disable, unit="img")
            self.bar.update(event["done"] - self.bar.n)
            if event["done"] == event["total"]:
                self.close()
        elif kind == "run_start":
            w = event["weights"]
            notes = [f"run {event['run_id']}: {event['n_images']} images ({event['n_excluded']} excluded), {event['folds']} folds on {event['device']}"]
            if event["synthetic"]:
                notes.append("data: SYNTHETIC demo phantom images, not real radiographs")
            notes.append(f"weights: {w.used}" + (f" - {w.message}" if w.message else ""))
            if event.get("resumed_folds") is not None:
                notes.append(f"resuming: {event['resumed_folds']} finished fold(s) kept, the others train again")
            for line in notes:
                logging.getLogger("core").info(line)
        elif kind == "note":
            logging.getLogger("core").info(event["text"])
        elif kind == "queued":
            logging.getLogger("core").info(f"queued: waiting for the GPU, which run {event['holder'] or '(unknown)'} holds (one CUDA run at a time)")
        elif kind == "fold_start":
            pack = event.get("pack") or [event["fold"]]
            if event["fold"] != pack[0]:  # folds trained together share one bar, driven by the first of them
                return
            self.close()
            self.loss, self.lead = None, event["fold"]
            consecutive = pack == list(range(pack[0], pack[0] + len(pack)))
            names = f"{pack[0] + 1}-{pack[-1] + 1}" if consecutive else ",".join(str(k + 1) for k in pack)
            desc = f"fold {event['fold'] + 1}/{event['folds']}" if len(pack) == 1 else f"folds {names}/{event['folds']}"
            self.bar = _bar(total=event["iterations"], desc=desc, disable=self.disable, unit="it")
        elif kind == "iteration" and event["phase"] == "train" and self.bar is not None and event["fold"] == self.lead:
            self.loss = event["loss"] if self.loss is None else 0.9 * self.loss + 0.1 * event["loss"]
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.loss:.3f}", refresh=False)
        elif kind == "fold_end":
            self.close()
            m = event["metrics"]
            logging.getLogger("core").info(
                f"fold {event['fold'] + 1}: AUC {m['auc']:.3f} accuracy {m['accuracy']:.3f} "
                f"sensitivity {m['sensitivity']:.3f} specificity {m['specificity']:.3f} ({event['train_seconds']:.1f} s training)"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


if __name__ == "__main__":
    sys.exit(main())
