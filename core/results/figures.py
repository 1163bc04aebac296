"""Plotly figures for the dashboard and HTML exports: titled, labelled, with units, in colour-blind-safe colours.

AUCs in legends read as the tables do (a percentage with two decimals, as the study's Table 3);
axes of rates and AUC stay fractions and say so. Colours are the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"), which stays
distinguishable under the common colour-vision deficiencies, without its black: a black curve or
marker vanishes on the dark theme. Past seven series, colours repeat with a dashed line.

Each figure is built whole, traces and layout in one `go.Figure(...)` call: plotly validates it
once, where adding traces and then merging layout keywords one by one cost 10-40 ms a figure,
which a page with six figures noticed. No template: the dashboard draws figures in Streamlit's
theme, which follows the viewer's light or dark choice; exports set their own (core/results/export.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"]
CHANCE = dict(color="grey", dash="dot")


def colour(k: int) -> str:
    return OKABE_ITO[k % len(OKABE_ITO)]


def dash(k: int) -> str:
    """Solid for the first seven series, dashed for the next seven (their colours repeat)."""
    return "solid" if (k // len(OKABE_ITO)) % 2 == 0 else "dash"


def _figure(traces: list[dict], title: str, x: str, y: str, *, xaxis: dict | None = None, yaxis: dict | None = None,
            **layout) -> go.Figure:
    """Traces (dicts with a `type`) under the common layout: title, axis titles, legend below the plot, size."""
    return go.Figure(data=traces, layout={
        "title": {"text": title}, "xaxis": {"title": {"text": x}, **(xaxis or {})}, "yaxis": {"title": {"text": y}, **(yaxis or {})},
        "legend": {"title": {"text": ""}, "orientation": "h", "yanchor": "top", "y": -0.18, "xanchor": "left", "x": 0},
        "margin": {"l": 60, "r": 20, "t": 60, "b": 50}, "height": 480, **layout})


def _scatter(**kw) -> dict:
    return {"type": "scatter", **kw}


def _metric_label(metric: str) -> str:
    return "cross-entropy loss" if metric == "loss" else "accuracy (fraction)"


def training_curves(curve: pd.DataFrame, *, metric: str = "loss", smoothing: float = 0.9) -> go.Figure:
    """Mini-batch `metric` per iteration (faint), its exponential smoothing (bold) and held-out points, one colour per fold."""
    traces = []
    for k, (fold, rows) in enumerate(curve.groupby("fold")):
        line = {"color": colour(k), "dash": dash(k)}
        train = rows[rows["phase"] == "train"].sort_values("iteration")
        held = rows[rows["phase"] == "heldout"].sort_values("iteration")
        values = train[metric].to_numpy(dtype=float)
        smooth = pd.Series(values).ewm(alpha=1 - smoothing).mean().to_numpy()
        iterations = train["iteration"].to_numpy()
        traces += [
            _scatter(x=iterations, y=values, mode="lines", line={**line, "width": 1}, opacity=0.3, name=f"fold {fold + 1} mini-batch",
                     showlegend=False),
            _scatter(x=iterations, y=smooth, mode="lines", line={**line, "width": 2}, name=f"fold {fold + 1} (smoothed)"),
            _scatter(x=held["iteration"].to_numpy(), y=held[metric].to_numpy(dtype=float), mode="markers",
                     marker={"color": colour(k), "size": 8, "symbol": "diamond"}, name=f"fold {fold + 1} held-out"),
        ]
    return _figure(traces, f"Training progress: {metric}", "iteration", _metric_label(metric))


def forest(folds: pd.DataFrame, *, pooled: float, mean: float) -> go.Figure:
    """Per-fold AUC as points, with the pooled and the mean per-fold AUC as reference lines."""
    error = None
    if "auc_ci_low" in folds.columns:  # 95 % DeLong interval of each fold's AUC, when the caller has it
        error = {"type": "data", "symmetric": False, "array": (folds["auc_ci_high"] - folds["auc"]).to_numpy(),
                 "arrayminus": (folds["auc"] - folds["auc_ci_low"]).to_numpy(), "color": OKABE_ITO[4]}
    traces = [_scatter(x=folds["auc"].to_numpy(dtype=float), y=[f"fold {f + 1}" for f in folds["fold"]], mode="markers", error_x=error,
                       marker={"color": OKABE_ITO[4], "size": 10}, name="fold AUC (95 % DeLong CI)" if error else "fold AUC")]
    # Reference lines are named in the legend, not annotated on the plot: near AUC 1 an annotation ran off the
    # right edge, and the two labels sat on top of the fold points.
    shapes = []
    for x, line, name in ((pooled, {"color": OKABE_ITO[0], "dash": "dash"}, f"pooled AUC {100 * pooled:.2f} %"),
                          (mean, {"color": OKABE_ITO[2], "dash": "dot"}, f"mean of fold AUCs {100 * mean:.2f} %")):
        shapes.append({"type": "line", "x0": x, "x1": x, "xref": "x", "y0": 0, "y1": 1, "yref": "y domain", "line": line})
        traces.append(_scatter(x=[None], y=[None], mode="lines", line=line, name=name))
    lows = folds["auc_ci_low"] if "auc_ci_low" in folds.columns else folds["auc"]
    low = float(np.nanmin([*lows.to_numpy(dtype=float), *folds["auc"].to_numpy(dtype=float), pooled, mean])) if len(folds) else 0.5
    # AUC lives in [0, 1]; start at chance unless a fold is worse
    return _figure(traces, "AUC per fold", "AUC (area under the ROC curve, as a fraction)", "held-out fold",
                   xaxis={"range": [max(0.0, min(0.5, low - 0.05)), 1.02]}, yaxis={"autorange": "reversed"}, shapes=shapes)


def repeats_plot(rows: list[dict]) -> go.Figure:
    """Each repeat's pooled AUC with its DeLong interval, and their mean: how far the split alone moves the result."""
    auc = np.array([r["auc"] for r in rows], dtype=float)
    error = {"type": "data", "symmetric": False, "array": [r["auc_ci_high"] - r["auc"] for r in rows],
             "arrayminus": [r["auc"] - r["auc_ci_low"] for r in rows], "color": OKABE_ITO[4]}
    labels = [f"repeat {r['repeat'] + 1}" + (" (reported)" if r["repeat"] == 0 else "") for r in rows]
    traces = [_scatter(x=auc, y=labels, mode="markers", error_x=error, marker={"color": OKABE_ITO[4], "size": 10},
                       name="pooled AUC of the repeat (95 % DeLong CI)")]
    mean = float(np.mean(auc))
    line = {"color": OKABE_ITO[2], "dash": "dot"}
    traces.append(_scatter(x=[None], y=[None], mode="lines", line=line, name=f"mean over repeats {100 * mean:.2f} %"))
    shapes = [{"type": "line", "x0": mean, "x1": mean, "xref": "x", "y0": 0, "y1": 1, "yref": "y domain", "line": line}]
    low = float(np.nanmin([r["auc_ci_low"] for r in rows] + [mean]))
    return _figure(traces, "Pooled AUC per repeat", "AUC (as a fraction)", "repeat (a new split each)",
                   xaxis={"range": [max(0.0, min(0.5, low - 0.05)), 1.02]}, yaxis={"autorange": "reversed"}, shapes=shapes)


def confusion_matlab(tp: int, fn: int, fp: int, tn: int, *, positive: str, negative: str, title_prefix: str = "") -> go.Figure:
    """The study's MATLAB confusionchart layout: rows = predicted, columns = true, with row and column summaries (%)."""
    cells = np.array([[tn, fn], [fp, tp]])  # rows: predicted negative, predicted positive
    total = cells.sum()
    text = [[f"{cells[i, j]}<br>{100 * cells[i, j] / total:.1f} %" for j in range(2)] for i in range(2)]
    col_ok = [tn / max(tn + fp, 1), tp / max(tp + fn, 1)]  # specificity, sensitivity
    row_ok = [tn / max(tn + fn, 1), tp / max(tp + fp, 1)]  # NPV, PPV
    # dark cells with white text read the same on the light and the dark theme
    heat = {"type": "heatmap", "z": [[1, 0], [0, 1]], "x": [negative, positive], "y": [negative, positive], "text": text,
            "texttemplate": "%{text}", "textfont": {"color": "white"}, "colorscale": [[0, "#3b2a1e"], [1, "#0b3d5c"]], "showscale": False,
            "hoverinfo": "skip"}
    # near-invisible markers on the four cells make them clickable (a heatmap cell cannot be selected in plotly);
    # customdata carries the outcome so a page can open those images in the Grad-CAM gallery
    names = [[("TN", "true negatives"), ("FN", "false negatives")], [("FP", "false positives"), ("TP", "true positives")]]
    cells_xy = [(x, y, names[i][j]) for i, y in enumerate([negative, positive]) for j, x in enumerate([negative, positive])]
    clicks = _scatter(x=[c[0] for c in cells_xy], y=[c[1] for c in cells_xy], customdata=[c[2][0] for c in cells_xy], mode="markers",
                      marker={"size": 90, "symbol": "square", "color": "rgba(255,255,255,0.01)"}, showlegend=False, name="cells",
                      text=[c[2][1] for c in cells_xy], hovertemplate="%{text}: click to see them in the Grad-CAM gallery<extra></extra>")
    title = f"{title_prefix}Pooled confusion matrix (accuracy {100 * (tp + tn) / total:.1f} %)"
    # column summaries under the class names (as separate annotations they collided when the cells were narrow),
    # row summaries to the right of the rows; both named as a clinician reads them. Fixed ranges: autorange padded
    # the axes for the 90 px markers, which squeezed the cells into a narrow strip.
    return _figure([heat, clicks], title, "true class", "predicted class",
                   xaxis={"tickvals": [negative, positive], "range": [-0.5, 1.5], "domain": [0, 0.85],
                          "ticktext": [f"{c}<br>{100 * v:.1f} % correct<br>({name})"
                                       for c, v, name in zip([negative, positive], col_ok, ["specificity", "sensitivity"])]},
                   yaxis={"range": [1.5, -0.5]}, margin={"l": 110, "r": 70, "t": 80, "b": 90},
                   annotations=[{"x": 0.86, "xref": "paper", "y": r, "text": f"{100 * v:.1f} %<br>({name})", "showarrow": False,
                                 "xanchor": "left"} for r, v, name in zip([negative, positive], row_ok, ["NPV", "PPV"])])


def roc(band: dict, *, auc: float, ci: tuple[float, float], points: list[dict] | None = None, name: str = "pooled ROC") -> go.Figure:
    """ROC with its bootstrap band and operating points."""
    traces = [
        _scatter(x=band["fpr"], y=band["high"], mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"),
        _scatter(x=band["fpr"], y=band["low"], mode="lines", line={"width": 0}, fill="tonexty", fillcolor="rgba(86,180,233,0.25)",
                 name=f"95 % band (bootstrap over {band.get('resampled', 'images')})"),
        _scatter(x=band["fpr"], y=band["tpr"], mode="lines", line={"color": OKABE_ITO[1], "width": 3},
                 name=f"{name}: AUC {100 * auc:.2f} % ({100 * ci[0]:.2f}-{100 * ci[1]:.2f} %)"),
        _scatter(x=[0, 1], y=[0, 1], mode="lines", line=CHANCE, name="chance"),
    ]
    for k, p in enumerate(points or []):
        traces.append(_scatter(x=[1 - p["specificity"]], y=[p["sensitivity"]], mode="markers",
                               marker={"size": 11, "color": colour(k + 5), "symbol": "x"}, name=f"{p['name']} (t = {p['threshold']:.2f})"))
    return _figure(traces, "ROC curve (pooled out-of-fold predictions)", "1 - specificity (false-positive rate)",
                   "sensitivity (true-positive rate)", xaxis={"range": [0, 1]}, yaxis={"range": [0, 1.01]})


def calibration_plot(bins: list[dict], *, brier: float) -> go.Figure:
    df = pd.DataFrame(bins)
    traces = [_scatter(x=[0, 1], y=[0, 1], mode="lines", line=CHANCE, name="perfect calibration")]
    if not df.empty:
        traces.append(_scatter(x=df["mean_predicted"].to_numpy(), y=df["observed"].to_numpy(), mode="lines+markers",
                               marker={"size": (6 + 20 * df["count"] / df["count"].max()).to_numpy()}, line={"color": OKABE_ITO[2]},
                               name="observed", text=df["count"].to_numpy(), hovertemplate="n = %{text}"))
    return _figure(traces, f"Calibration (Brier score {brier:.3f})", "mean predicted probability of the positive class",
                   "observed share of positives")


def calibration_title(row: dict) -> str:
    """The calibration numbers in words, for a caption under the plot (keys of core.results.stats.calibration_fit)."""
    def fit(key: str) -> str:
        v, lo, hi = row.get(key), row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
        return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f} (95 % CI {lo:.2f} to {hi:.2f})"

    return (f"Brier score {row['brier']:.3f}; calibration intercept {fit('calibration_intercept')} (ideal 0; below 0: probabilities too "
            f"high on average); calibration slope {fit('calibration_slope')} (ideal 1; below 1: too extreme)")


def decision_curve(rows: list[dict], *, title: str = "Decision curve (pooled out-of-fold predictions)") -> go.Figure:
    """Net benefit of acting on the model's call against the threshold probability, beside treating everyone and no one.
    The y axis stops at -0.05 below: treat-all falls steeply at high thresholds and would squeeze the curves of interest."""
    df = pd.DataFrame(rows)
    top = float(max(df["net_benefit"].max(), df["net_benefit_treat_all"].max(), 0.01)) if not df.empty else 1.0
    traces = [_scatter(x=df["threshold"].to_numpy(), y=df["net_benefit"].to_numpy(), mode="lines", line={"color": OKABE_ITO[4], "width": 2.5},
                       name="model"),
              _scatter(x=df["threshold"].to_numpy(), y=df["net_benefit_treat_all"].to_numpy(), mode="lines",
                       line={"color": OKABE_ITO[0], "dash": "dash"}, name="treat all"),
              _scatter(x=[0, 1], y=[0, 0], mode="lines", line=CHANCE, name="treat none")]
    return _figure(traces, title, "threshold probability (the risk at which one would act)", "net benefit (true positives per patient)",
                   xaxis={"range": [0, 1]}, yaxis={"range": [-0.05, top * 1.1]})


def roc_overlay(curves: list[tuple[str, dict, float]]) -> go.Figure:
    """Several runs' pooled ROC curves (name, band dict, AUC) on one chart."""
    traces = [_scatter(x=band["fpr"], y=band["tpr"], mode="lines", line={"color": colour(k), "dash": dash(k), "width": 2.5},
                       name=f"{name}: AUC {100 * auc:.2f} %") for k, (name, band, auc) in enumerate(curves)]
    traces.append(_scatter(x=[0, 1], y=[0, 1], mode="lines", line=CHANCE, name="chance"))
    return _figure(traces, "ROC curves (pooled out-of-fold predictions)", "1 - specificity (false-positive rate)",
                   "sensitivity (true-positive rate)", xaxis={"range": [0, 1]}, yaxis={"range": [0, 1.01]})


def accuracy_vs_time(rows: list[dict]) -> go.Figure:
    """Accuracy (with its Wilson interval) against training time, one point per run."""
    traces = [_scatter(x=[r["train_seconds"] / 60], y=[100 * r["accuracy"]], mode="markers", marker={"size": 12, "color": colour(k)},
                       name=r["name"], error_y={"type": "data", "symmetric": False, "array": [100 * (r["accuracy_ci_high"] - r["accuracy"])],
                                                "arrayminus": [100 * (r["accuracy"] - r["accuracy_ci_low"])]})
              for k, r in enumerate(rows)]
    return _figure(traces, "Accuracy against training time", "training time (minutes, all folds)", "accuracy (%, 95 % Wilson CI)")


def training_curves_overlay(curves: list[tuple[str, pd.DataFrame]], *, metric: str = "loss", smoothing: float = 0.9) -> go.Figure:
    """Several runs' training curves on one chart: per run, the smoothed mini-batch `metric` averaged over folds."""
    traces = []
    for k, (name, curve) in enumerate(curves):
        train = curve[curve["phase"] == "train"] if not curve.empty else curve
        if train.empty:
            continue
        ordered = train.sort_values("iteration")
        smooth = ordered.groupby("fold", group_keys=False)[metric].apply(lambda v: v.ewm(alpha=1 - smoothing).mean())
        mean = smooth.groupby(ordered["iteration"]).mean()
        traces.append(_scatter(x=mean.index.to_numpy(), y=mean.to_numpy(), mode="lines",
                               line={"color": colour(k), "dash": dash(k), "width": 2.5}, name=f"{name} (mean of folds, smoothed)"))
    return _figure(traces, f"Training progress of each run: {metric}", "iteration", _metric_label(metric))


def sweep_parallel(rows: list[dict], varies: list[str]) -> go.Figure:
    """A sweep at a glance: one line per run across the settings that differ and its pooled AUC, coloured by AUC (viridis).

    Numeric settings keep their scale; others (a backbone, an optimiser) become evenly spaced named ticks.
    """
    dimensions = []
    for key in varies:
        values = [r["varies"][key] for r in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            dimensions.append({"label": key, "values": values})
        else:
            names = sorted({str(v) for v in values})
            dimensions.append({"label": key, "values": [names.index(str(v)) for v in values], "tickvals": list(range(len(names))),
                               "ticktext": names})
    auc = [100 * r["auc"] for r in rows]
    dimensions.append({"label": "AUC % (pooled)", "values": auc})
    trace = {"type": "parcoords", "dimensions": dimensions,
             "line": {"color": auc, "colorscale": "Viridis", "showscale": True, "colorbar": {"title": {"text": "AUC %"}}}}
    return go.Figure(data=[trace], layout={"title": {"text": "Sweep: settings against pooled AUC (one line per run)"}, "height": 420,
                                           "margin": {"l": 80, "r": 80, "t": 90, "b": 40}})
