"""Plotly figures for the dashboard and HTML exports: titled, labelled, with units, in colour-blind-safe colours.

Colours are the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"), which stays
distinguishable under the common colour-vision deficiencies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    # No template: the dashboard draws figures in Streamlit's theme, which follows the viewer's light or dark
    # choice (a fixed plotly_dark was overridden there anyway, and deep-copying it cost ~40 ms a figure);
    # exports set their own (core/results/export.py).
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, legend_title_text="",
                      legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0),
                      margin=dict(l=60, r=20, t=60, b=50), height=480)
    return fig


def training_curves(curve: pd.DataFrame, *, metric: str = "loss", smoothing: float = 0.9) -> go.Figure:
    """Mini-batch `metric` per iteration (faint), its exponential smoothing (bold) and held-out points, one colour per fold."""
    fig = go.Figure()
    for k, (fold, rows) in enumerate(curve.groupby("fold")):
        colour = OKABE_ITO[k % len(OKABE_ITO)]
        train = rows[rows["phase"] == "train"].sort_values("iteration")
        held = rows[rows["phase"] == "heldout"].sort_values("iteration")
        values = train[metric].to_numpy(dtype=float)
        smooth = pd.Series(values).ewm(alpha=1 - smoothing).mean()
        fig.add_scatter(x=train["iteration"], y=values, mode="lines", line=dict(color=colour, width=1), opacity=0.3,
                        name=f"fold {fold + 1} mini-batch", showlegend=False)
        fig.add_scatter(x=train["iteration"], y=smooth, mode="lines", line=dict(color=colour, width=2), name=f"fold {fold + 1} (smoothed)")
        fig.add_scatter(x=held["iteration"], y=held[metric], mode="markers", marker=dict(color=colour, size=8, symbol="diamond"),
                        name=f"fold {fold + 1} held-out")
    label = "cross-entropy loss" if metric == "loss" else "accuracy (fraction)"
    return _layout(fig, f"Training progress: {metric}", "iteration", label)


def forest(folds: pd.DataFrame, *, pooled: float, mean: float) -> go.Figure:
    """Per-fold AUC as points, with the pooled and the mean per-fold AUC as reference lines."""
    fig = go.Figure()
    error = None
    if "auc_ci_low" in folds.columns:  # 95 % DeLong interval of each fold's AUC, when the caller has it
        error = dict(type="data", symmetric=False, array=(folds["auc_ci_high"] - folds["auc"]).to_numpy(),
                     arrayminus=(folds["auc"] - folds["auc_ci_low"]).to_numpy(), color=OKABE_ITO[4])
    fig.add_scatter(x=folds["auc"], y=[f"fold {f + 1}" for f in folds["fold"]], mode="markers", error_x=error,
                    marker=dict(color=OKABE_ITO[4], size=10), name="fold AUC (95 % DeLong CI)" if error else "fold AUC")
    # Reference lines are named in the legend, not annotated on the plot: near AUC 1 an annotation ran off the
    # right edge, and the two labels sat on top of the fold points.
    for x, line, name in ((pooled, dict(color=OKABE_ITO[0], dash="dash"), f"pooled AUC {pooled:.3f}"),
                          (mean, dict(color=OKABE_ITO[2], dash="dot"), f"mean of fold AUCs {mean:.3f}")):
        fig.add_vline(x=x, line=line)
        fig.add_scatter(x=[None], y=[None], mode="lines", line=line, name=name)
    fig.update_yaxes(autorange="reversed")
    lows = folds["auc_ci_low"] if "auc_ci_low" in folds.columns else folds["auc"]
    low = float(np.nanmin([*lows.to_numpy(dtype=float), *folds["auc"].to_numpy(dtype=float), pooled, mean])) if len(folds) else 0.5
    fig.update_xaxes(range=[max(0.0, min(0.5, low - 0.05)), 1.02])  # AUC lives in [0, 1]; start at chance unless a fold is worse
    return _layout(fig, "AUC per fold", "AUC (area under the ROC curve)", "held-out fold")


def confusion_matlab(tp: int, fn: int, fp: int, tn: int, *, positive: str, negative: str) -> go.Figure:
    """The study's MATLAB confusionchart layout: rows = predicted, columns = true, with row and column summaries (%)."""
    cells = np.array([[tn, fn], [fp, tp]])  # rows: predicted negative, predicted positive
    total = cells.sum()
    text = [[f"{cells[i, j]}<br>{100 * cells[i, j] / total:.1f} %" for j in range(2)] for i in range(2)]
    col_ok = [tn / max(tn + fp, 1), tp / max(tp + fn, 1)]  # specificity, sensitivity
    row_ok = [tn / max(tn + fn, 1), tp / max(tp + fp, 1)]  # NPV, PPV
    z = [[1, 0], [0, 1]]
    fig = go.Figure(go.Heatmap(z=z, x=[negative, positive], y=[negative, positive], text=text, texttemplate="%{text}",
                               colorscale=[[0, "#3b2a1e"], [1, "#0b3d5c"]], showscale=False, hoverinfo="skip"))
    # column summaries under the class names (as separate annotations they collided when the cells were narrow),
    # row summaries to the right of the rows; both named as a clinician reads them
    fig.update_xaxes(tickvals=[negative, positive], ticktext=[f"{c}<br>{100 * v:.1f} % correct<br>({name})"
                                                              for c, v, name in zip([negative, positive], col_ok, ["specificity", "sensitivity"])])
    fig.update_layout(annotations=[dict(x=0.86, xref="paper", y=r, text=f"{100 * v:.1f} %<br>({name})", showarrow=False, xanchor="left")
                                   for r, v, name in zip([negative, positive], row_ok, ["NPV", "PPV"])])
    # near-invisible markers on the four cells make them clickable (a heatmap cell cannot be selected in plotly);
    # customdata carries the outcome so a page can open those images in the Grad-CAM gallery
    names = [[("TN", "true negatives"), ("FN", "false negatives")], [("FP", "false positives"), ("TP", "true positives")]]
    cells_xy = [(x, y, names[i][j]) for i, y in enumerate([negative, positive]) for j, x in enumerate([negative, positive])]
    fig.add_scatter(x=[c[0] for c in cells_xy], y=[c[1] for c in cells_xy], customdata=[c[2][0] for c in cells_xy], mode="markers",
                    marker=dict(size=90, symbol="square", color="rgba(255,255,255,0.01)"), showlegend=False, name="cells",
                    text=[c[2][1] for c in cells_xy], hovertemplate="%{text}: click to see them in the Grad-CAM gallery<extra></extra>")
    # fixed ranges: autorange padded the axes for the 90 px markers, which squeezed the cells into a narrow strip
    fig.update_xaxes(range=[-0.5, 1.5])
    fig.update_yaxes(range=[1.5, -0.5])
    _layout(fig, f"Pooled confusion matrix (accuracy {100 * (tp + tn) / total:.1f} %)", "true class", "predicted class")
    fig.update_layout(margin=dict(l=110, r=70, t=80, b=90), xaxis=dict(domain=[0, 0.85]))
    return fig


def roc(band: dict, *, auc: float, ci: tuple[float, float], points: list[dict] | None = None, name: str = "pooled ROC") -> go.Figure:
    """ROC with its bootstrap band and operating points."""
    fig = go.Figure()
    fig.add_scatter(x=band["fpr"], y=band["high"], mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip")
    fig.add_scatter(x=band["fpr"], y=band["low"], mode="lines", line=dict(width=0), fill="tonexty",
                    fillcolor="rgba(86,180,233,0.25)", name=f"95 % band (bootstrap over {band.get('resampled', 'images')})")
    fig.add_scatter(x=band["fpr"], y=band["tpr"], mode="lines", line=dict(color=OKABE_ITO[1], width=3),
                    name=f"{name}: AUC {auc:.3f} ({ci[0]:.3f}-{ci[1]:.3f})")
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="grey", dash="dot"), name="chance")
    for k, p in enumerate(points or []):
        fig.add_scatter(x=[1 - p["specificity"]], y=[p["sensitivity"]], mode="markers",
                        marker=dict(size=11, color=OKABE_ITO[(k + 5) % len(OKABE_ITO)], symbol="x"),
                        name=f"{p['name']} (t = {p['threshold']:.2f})")
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.01])
    return _layout(fig, "ROC curve (pooled out-of-fold predictions)", "1 - specificity (false-positive rate)", "sensitivity (true-positive rate)")


def calibration_plot(bins: list[dict], *, brier: float) -> go.Figure:
    df = pd.DataFrame(bins)
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="grey", dash="dot"), name="perfect calibration")
    if not df.empty:
        fig.add_scatter(x=df["mean_predicted"], y=df["observed"], mode="lines+markers", marker=dict(size=6 + 20 * df["count"] / df["count"].max()),
                        line=dict(color=OKABE_ITO[2]), name="observed", text=df["count"], hovertemplate="n = %{text}")
    return _layout(fig, f"Calibration (Brier score {brier:.3f})", "mean predicted probability of the positive class", "observed share of positives")


def roc_overlay(curves: list[tuple[str, dict, float]]) -> go.Figure:
    """Several runs' pooled ROC curves (name, band dict, AUC) on one chart."""
    fig = go.Figure()
    for k, (name, band, auc) in enumerate(curves):
        fig.add_scatter(x=band["fpr"], y=band["tpr"], mode="lines", line=dict(color=OKABE_ITO[k % len(OKABE_ITO)], width=2.5),
                        name=f"{name}: AUC {auc:.3f}")
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="grey", dash="dot"), name="chance")
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.01])
    return _layout(fig, "ROC curves (pooled out-of-fold predictions)", "1 - specificity (false-positive rate)", "sensitivity (true-positive rate)")


def accuracy_vs_time(rows: list[dict]) -> go.Figure:
    """Accuracy (with its Wilson interval) against training time, one point per run."""
    fig = go.Figure()
    for k, r in enumerate(rows):
        fig.add_scatter(x=[r["train_seconds"] / 60], y=[100 * r["accuracy"]], mode="markers",
                        marker=dict(size=12, color=OKABE_ITO[k % len(OKABE_ITO)]), name=r["name"],
                        error_y=dict(type="data", symmetric=False, array=[100 * (r["accuracy_ci_high"] - r["accuracy"])],
                                     arrayminus=[100 * (r["accuracy"] - r["accuracy_ci_low"])]))
    return _layout(fig, "Accuracy against training time", "training time (minutes, all folds)", "accuracy (%, 95 % Wilson CI)")


def training_curves_overlay(curves: list[tuple[str, pd.DataFrame]], *, metric: str = "loss", smoothing: float = 0.9) -> go.Figure:
    """Several runs' training curves on one chart: per run, the smoothed mini-batch `metric` averaged over folds."""
    fig = go.Figure()
    for k, (name, curve) in enumerate(curves):
        train = curve[curve["phase"] == "train"] if not curve.empty else curve
        if train.empty:
            continue
        smooth = (train.sort_values("iteration").groupby("fold", group_keys=False)[metric]
                  .apply(lambda v: v.ewm(alpha=1 - smoothing).mean()))
        mean = smooth.groupby(train.sort_values("iteration")["iteration"]).mean()
        fig.add_scatter(x=mean.index, y=mean.to_numpy(), mode="lines", line=dict(color=OKABE_ITO[k % len(OKABE_ITO)], width=2.5),
                        name=f"{name} (mean of folds, smoothed)")
    label = "cross-entropy loss" if metric == "loss" else "accuracy (fraction)"
    return _layout(fig, f"Training progress of each run: {metric}", "iteration", label)
