"""Self-contained HTML reports of a run or a comparison, to hand to clinicians.

One file that opens offline in any browser: tables, interactive figures (plotly.js is
inlined once), the configuration, the data summary and a few Grad-CAM examples as embedded
PNGs. Everything is read from the store, as the dashboard does; nothing is recomputed by
training code. Every text that came from a user (run names, notes, paths) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from core import __version__
from core.config import heat_map_text
from core.results import figures
from core.results.checklist import checklist_html
from core.results.report import roc_with_band, table3, table_cells, _footer, _with_ci
from core.results.records import RunRecord
from core.results.store import Store

REPORT_TEMPLATE = "plotly_white"  # printed or projected reports read better on white than the dashboard's dark theme

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#111}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #0072B2;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em} th,td{border:1px solid #bbb;padding:4px 8px;text-align:left}
th{background:#eef4fa} .warn{background:#fff3cd;border:1px solid #e0c36b;padding:.6em 1em;border-radius:4px}
.muted{color:#555;font-size:.9em} .grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.cams{display:grid;grid-template-columns:repeat(4,1fr);gap:.6em} .cams figure{margin:0} .cams img{width:100%}
figcaption{font-size:.8em;color:#333} .hl{background:#fff3a0;font-weight:bold}
.wide{overflow-x:auto} @media print{.wide{overflow:visible}}
"""


def run_report_html(runs_dir: Path, run_id: str, *, gallery_size: int = 8) -> str:
    """One run: headline metrics with intervals, operating points, every figure of the Runs page, folds, data, configuration."""
    return comparison_report_html(runs_dir, [run_id], gallery_size=gallery_size)


def comparison_report_html(runs_dir: Path, run_ids: list[str], *, gallery_size: int = 8) -> str:
    """Two or more runs (the first is the reference for DeLong p-values); a single id gives the run report."""
    store = Store(Path(runs_dir))
    rows = table3(store, run_ids)
    single = len(rows) == 1
    title = f"Run {rows[0]['name']}" if single else f"Comparison of {len(rows)} runs"
    parts = [f"<h1>cxr-transfer: {_e(title)}</h1>",
             f"<p class='muted'>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by cxr-transfer {__version__}. "
             "Research tool, not a diagnosis: figures describe cross-validated performance on the data below.</p>"]
    if any(r["synthetic"] for r in rows):
        parts.append("<p class='warn'><b>SYNTHETIC data.</b> These runs used the demo phantom images, not real radiographs; "
                     "the numbers show how the tool works, not how a model performs on patients.</p>")
    plots: list[str] = []

    parts.append("<h2 id='results'>Results (Table 3 layout)</h2>")
    header, body = table_cells(rows)
    parts.append(_table(["run", *header], [[r["name"], *cells] for r, cells in zip(rows, body)], highlight=len(rows[0]["varies"])))
    parts.append(f"<p class='muted'>{_e(_footer(rows))}</p>")
    if rows[0]["varies"] and not single:
        parts.append(f"<p>Settings that differ between these runs (highlighted): <b>{_e(', '.join(rows[0]['varies']))}</b></p>")

    parts.append("<h2 id='operating-points'>Operating points</h2>")
    op_rows = [[r["name"], op["name"], f"{op['threshold']:.3f}", _with_ci(op, "sensitivity"), _with_ci(op, "specificity"),
                _with_ci(op, "ppv"), _with_ci(op, "npv"), op["chosen_on"]] for r in rows for op in r["operating_points"]]
    parts.append(_table(["run", "rule", "threshold", "sensitivity % (95% CI)", "specificity % (95% CI)", "PPV % (95% CI)",
                         "NPV % (95% CI)", "threshold chosen on"], op_rows))
    parts.append("<p class='muted'>'cross-fitted' thresholds are chosen on the other folds' predictions and applied to each fold, "
                 "an honest estimate of how a threshold transfers; in-sample thresholds are chosen on the same predictions.</p>")

    if any("repeats" in r for r in rows):
        parts.append("<h2 id='repeats'>Repeated cross-validation</h2>")
        rep_rows = [[r["name"], x["repeat"] + 1, x["n"], f"{100 * x['auc']:.2f} ({100 * x['auc_ci_low']:.2f}-{100 * x['auc_ci_high']:.2f})",
                     _with_ci(x, "sensitivity"), _with_ci(x, "specificity")] for r in rows for x in r.get("repeats", [])]
        parts.append(_table(["run", "repeat", "images", "pooled AUC % (95% CI)", "sensitivity % (95% CI)", "specificity % (95% CI)"],
                            rep_rows))
        parts.append("<p class='muted'>Each repeat splits the images anew (patients kept together) and predicts every image once; "
                     "rates at 0.5. The run's figures above are its first repeat's.</p>")

    if any(r["subgroups"] for r in rows):
        parts.append("<h2 id='subgroups'>Subgroups</h2>")
        sub_rows = [[r["name"], g["variable"], g["level"], g["n"], g["n_positive"],
                     "-" if g["auc"] is None else f"{100 * g['auc']:.2f} ({100 * g['auc_ci_low']:.2f}-{100 * g['auc_ci_high']:.2f})",
                     _with_ci(g, "sensitivity") if g["sensitivity"] is not None else "-",
                     _with_ci(g, "specificity") if g["specificity"] is not None else "-",
                     "-" if g["p_vs_rest"] is None else f"{g['p_vs_rest']:.3f}",
                     "few cases" if g["small"] else ""] for r in rows for g in r["subgroups"]]
        parts.append(_table(["run", "variable", "level", "images", "positives", "AUC % (95% CI)", "sensitivity % (95% CI)",
                             "specificity % (95% CI)", "p (AUC vs rest)", "note"], sub_rows))
        parts.append("<p class='muted'>Out-of-fold predictions by subgroup, at 0.5; p: unpaired DeLong test against all other "
                     "images. Groups with fewer than 5 positives or negatives are flagged as few cases.</p>")

    if any(r["external"] for r in rows):
        parts.append("<h2 id='external'>External validation</h2>")
        ext_rows = []
        for r in rows:
            for label, e in [("internal (out of fold)", {**r, "p_vs_internal": None}), *[(e["name"], e) for e in r["external"]]]:
                ext_rows.append([r["name"], label, e["n_images"], "-" if e["auc"] is None else
                                 f"{100 * e['auc']:.2f} ({100 * e['auc_ci_low']:.2f}-{100 * e['auc_ci_high']:.2f})",
                                 _with_ci(e, "sensitivity"), _with_ci(e, "specificity"),
                                 "-" if e["p_vs_internal"] is None else f"{e['p_vs_internal']:.3f}"])
        parts.append(_table(["run", "evaluated on", "images", "AUC % (95% CI)", "sensitivity % (95% CI)", "specificity % (95% CI)",
                             "p (AUC vs internal)"], ext_rows))
        parts.append("<p class='muted'>External: the run's fold models (mean probability) on another data set with the same "
                     "classes; p: unpaired DeLong test against the internal out-of-fold AUC.</p>")

    reviewed = [r for r in rows if sum(r.get("review_tags", {}).values())]
    studied = [r for r in rows if r.get("reader_studies")]
    if reviewed or studied:
        parts.append("<h2 id='review'>Failure review and reader studies</h2>")
    if reviewed:
        tags = list(reviewed[0]["review_tags"])
        parts.append(_table(["run", *tags], [[r["name"], *(r["review_tags"][t] for t in tags)] for r in reviewed]))
        parts.append("<p class='muted'>Cases per tag that reviewers gave on the Review page (a case tagged alike by two reviewers "
                     "counts once per tag). Label errors can be left out of a next run (exclude_label_errors).</p>")
    if studied:
        study_rows = []
        for r in studied:
            for s in r["reader_studies"]:
                for p in s["pooled"]:
                    m, mod = p["reader_metrics"], p["model_metrics"]
                    study_rows.append([r["name"], s["name"], p["session"], p["n_readers"], p["n_read"], _rate(m, "sensitivity"),
                                       _rate(m, "specificity"), _rate(m, "auc", 2), _rate(mod, "auc", 2)])
        parts.append(_table(["run", "study", "session", "readers", "reads", "sensitivity % (95% CI)", "specificity % (95% CI)",
                             "readers' AUC % (95% CI)", "model AUC % on the same reads"], study_rows))
        parts.append("<p class='muted'>Readers' calls on a stratified sample of the run's images, pooled over readers: every read "
                     "counted as independent (no multi-reader multi-case analysis), so the intervals are too narrow. Per reader "
                     "figures and the paired tests: python -m core reader-report STUDY_ID.</p>")

    parts.append("<h2 id='calibration'>Calibration</h2>")
    parts.append("<ul>" + "".join(f"<li><b>{_e(r['name'])}</b>: {_e(figures.calibration_title(r))}</li>" for r in rows) + "</ul>")
    parts.append("<p class='muted'>Logistic recalibration (Wald 95 % intervals). The decision curve below (net benefit against "
                 "threshold probability, Vickers &amp; Elkin 2006) shows whether acting on the model's call does more good than "
                 "treating everyone or no one.</p>")

    parts.append("<h2 id='figures'>Figures</h2>")
    if single:
        r = rows[0]
        band = roc_with_band(store, r["run_id"], n_boot=300)
        ops = [p for p in r["operating_points"] if "cross-fitted" not in p["name"]]
        negative = r["negative_class"]
        c = r["confusion"]
        from core.dashboard import with_fold_auc_ci

        folds = with_fold_auc_ci(store, r["run_id"], store.folds(r["run_id"]), store.run_record(r["run_id"]))
        curve = store.iterations(r["run_id"])
        figs = [figures.confusion_matlab(c["tp"], c["fn"], c["fp"], c["tn"], positive=r["positive_class"], negative=negative),
                figures.roc(band, auc=r["auc"], ci=(r["auc_ci_low"], r["auc_ci_high"]), points=ops),
                figures.forest(folds, pooled=r["auc"], mean=r["auc_mean_folds"]),
                figures.calibration_plot(r["calibration"]["bins"], brier=r["calibration"]["brier"]),
                figures.decision_curve(r["decision_curve"])]
        if not curve.empty:
            figs += [figures.training_curves(curve, metric="loss"), figures.training_curves(curve, metric="accuracy")]
    else:
        curves = [(r["name"], roc_with_band(store, r["run_id"], n_boot=0), r["auc"]) for r in rows]
        figs = [figures.roc_overlay(curves), figures.accuracy_vs_time(rows)]
        for r in rows:
            c = r["confusion"]
            figs.append(figures.confusion_matlab(c["tp"], c["fn"], c["fp"], c["tn"], positive=r["positive_class"],
                                                 negative=r["negative_class"], title_prefix=f"{r['name']}: "))
    for fig in figs:
        plots.append(_figure(fig, first=not plots))
    parts.append("<div class='grid'>" + "".join(f"<div>{p}</div>" for p in plots) + "</div>")

    for k, r in enumerate(rows):
        parts.append(f"<h2 id='{'runs' if k == 0 else f'runs-{k + 1}'}'>{_e(r['name'])}: folds, data and configuration</h2>")
        r["has_cohort_flow"] = _has_flow(store, r["run_id"])
        run = store.run_record(r["run_id"])
        folds = store.folds(r["run_id"])
        parts.append(_table(["fold", "train images", "test images", "iterations", "accuracy %", "sensitivity %", "specificity %", "AUC", "training s"],
                            [[int(f.fold) + 1, int(f.n_train), int(f.n_test), int(f.iterations), f"{100 * f.accuracy:.1f}",
                              f"{100 * f.sensitivity:.1f}", f"{100 * f.specificity:.1f}", f"{f.auc:.3f}", f"{f.train_seconds:.1f}"]
                             for f in folds.itertuples()]))
        parts.append(_data_summary(store, run))
        parts.append(f"<p class='muted'>Weights: {_e(run.weights_used)}. Device: {_e(run.device)}. torch {_e(run.torch_version)}. "
                     f"Code version {_e(run.code_version)}. Run id {_e(r['run_id'])}, started {_e(run.created_at)}.</p>")
        if run.notes:
            parts.append(f"<p><b>Notes:</b> {_e(run.notes)}</p>")
        parts.append("<details><summary>Configuration</summary>"
                     + _table(["setting", "value"], [[k, json.dumps(v)] for k, v in r["config"].items()]) + "</details>")
        if gallery_size:
            parts.append(_cam_strip(runs_dir, r["run_id"], gallery_size, heat_map_text(run.config)))

    parts.append(checklist_html(rows, _e))
    body_html = "\n".join(parts)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>cxr-transfer: {_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>{body_html}</body></html>\n")


def _has_flow(store: Store, run_id: str) -> bool:
    """Whether the run's data set carries its cohort selection steps (a cohort built by `python -m core cohort`)."""
    dataset = store.dataset(store.run_record(run_id).dataset_id)
    return dataset is not None and bool(dataset["flow"].get("steps"))


def _data_summary(store: Store, run: RunRecord) -> str:
    """Counts computed in DuckDB (a data set may hold hundreds of thousands of rows)."""
    per_class = store.class_counts(run.dataset_id)
    excluded = store.exclusion_counts(run.dataset_id)
    ds = store.dataset(run.dataset_id)
    where = f"{ds['source']} data set at {ds['root']}" if ds is not None else "data set"
    out = [f"<p><b>Data:</b> {_e(where)}; {int(per_class['images'].sum())} images used"
           + (", grouped by patient into folds" if run.grouped else ", no patient ids (folds split by image)") + ".</p>"]
    if run.leakage:
        out.append(f"<p{' class=warn' if run.leak_status == 'leaks' else ''}><b>Patient leakage audit:</b> {_e(run.leakage)}.</p>")
    out.append(_table(["class", "images", "patients"], per_class.values.tolist()))
    steps = ds["flow"].get("steps", []) if ds is not None else []
    if steps:
        out.append("<p>Cohort selection:</p>" + _table(["step", "images", "studies", "patients", "removed", "reason"],
                   [[st.get("name"), st.get("n_images"), st.get("n_studies"), st.get("n_patients"), st.get("n_removed") or "",
                     st.get("reason") or ""] for st in steps]))
    if not excluded.empty:
        out.append("<p>Excluded files and why:</p>" + _table(["reason", "files"], excluded.values.tolist()))
    return "".join(out)


def _cam_strip(runs_dir: Path, run_id: str, n: int, how: str) -> str:
    """The most confident heat maps of each outcome, as embedded PNGs (original grey, heat map overlaid)."""
    from PIL import Image

    from core.dashboard import gallery
    from core.results.overlay import mask_outline, overlay

    items = []
    for outcome in ("TP", "FN", "FP", "TN"):
        items += gallery(runs_dir, run_id, outcomes=[outcome], limit=max(1, n // 4), display=192)
    if not items:
        return "<p class='muted'>No Grad-CAM heat maps stored for this run (gradcam=false).</p>"
    figs = []
    for item in items:
        picture = overlay(item["gray"], item["cam"], opacity=0.45)
        if item["mask"] is not None:
            picture[mask_outline(item["mask"])] = 255
        buf = io.BytesIO()
        Image.fromarray(picture).save(buf, format="PNG")
        src = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        figs.append(f"<figure><img src='{src}' alt='Grad-CAM of {_e(item['image_id'])}'><figcaption>{_e(item['outcome'])} · "
                    f"p(positive) {item['prob_positive']:.2f} · fold {item['fold'] + 1} · {_e(item['image_id'])}</figcaption></figure>")
    return ("<h3>Grad-CAM examples (most confident of each outcome)</h3><div class='cams'>" + "".join(figs) + "</div>"
            f"<p class='muted'>Heat map of the predicted class over the image (viridis: yellow = most influence): {_e(how)}. "
            "Grad-CAM shows where the model's evidence lies, not whether it is right.</p>")


def _figure(fig, *, first: bool) -> str:
    fig.update_layout(template=REPORT_TEMPLATE)
    return fig.to_html(full_html=False, include_plotlyjs=True if first else False,
                       config={"displaylogo": False, "responsive": True})


def _table(header: list[str], rows: list[list], *, highlight: int = 0) -> str:
    """An HTML table; the first `highlight` data columns after the first are marked (settings that differ)."""
    th = "".join(f"<th{' class=hl' if 0 < k <= highlight else ''}>{_e(h)}</th>" for k, h in enumerate(header))
    trs = "".join("<tr>" + "".join(f"<td{' class=hl' if 0 < k <= highlight else ''}>{_e(c)}</td>" for k, c in enumerate(cells)) + "</tr>"
                  for cells in rows)
    # in a scrolling box: a comparison of many runs with many differing settings is wider than the page
    return f"<div class=wide><table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table></div>"


def _rate(m: dict, key: str, digits: int = 1) -> str:
    """A reader study's figure with its interval, or '-' where it has none (None, never a fake 0)."""
    return "-" if m.get(key) is None else _with_ci(m, key, digits)


def _e(value) -> str:
    return html.escape("" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value))
