"""How the pages show values: units, column names, run labels, table layouts and the highlight colour.

Why here and not in core: core hands the pages typed records and plain numbers (fractions in [0, 1]);
how they read on screen is the dashboard's choice, made once so every page says the same thing the
same way. The units follow the study's Table 3 (and core.results.report, which writes it for exports and the
command line): AUC as a percentage with two decimals ("93.53 %"), accuracy, sensitivity, specificity,
PPV and NPV as percentages with one; intervals as "low-high" in the same unit.
"""

from __future__ import annotations

import math

import pandas as pd

# A highlight that reads on the light and the dark theme: Okabe-Ito orange, translucent (no black, no fixed dark fill).
HIGHLIGHT = {"background-color": "rgba(230, 159, 0, 0.28)", "font-weight": "bold"}
MISSING = "–"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage: 0.9042 -> "90.4 %"; None or NaN -> "–"."""
    return MISSING if _missing(value) else f"{100 * value:.{digits}f} %"


def auc(value: float | None) -> str:
    """An AUC as the study reports it: 0.93534 -> "93.53 %"."""
    return pct(value, 2)


def interval(low: float | None, high: float | None, digits: int = 1) -> str:
    """A 95 % interval of fractions as percentages: "88.1-92.3 %" ("" when there is none, e.g. a one-class fold)."""
    if _missing(low) or _missing(high):
        return ""
    return f"{100 * low:.{digits}f}-{100 * high:.{digits}f} %"


def with_interval(value: float | None, low: float | None, high: float | None, digits: int = 1, *, unit: bool = True) -> str:
    """A percentage with its 95 % interval in brackets: "90.4 % (88.1-92.3)"; without `unit` "90.4 (88.1-92.3)", for
    tables whose headers say %. An absent value is "–", never a fake 0."""
    if _missing(value):
        return MISSING
    text = f"{pct(value, digits)} ({interval(low, high, digits).removesuffix(' %')})"
    return text if unit else text.replace(" %", "")


def p_value(value: float | None) -> str:
    """A p-value as tables show it: three decimals, "< 0.001" below that, "–" when there is none."""
    return MISSING if _missing(value) else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def percent_column(values, digits: int = 1) -> pd.Series:
    """Fractions as numbers in percent (sortable in a table, unlike text)."""
    return (pd.Series(values, dtype="float64") * 100).round(digits)


def run_label(run) -> str:
    """How a run is named wherever it is chosen: its name, pooled AUC and preset (a RunSummary or RunRecord)."""
    score = f" · AUC {auc(run.auc)}" if run.auc is not None else ""
    return f"{run.name}{score} · {run.preset or 'custom'}"


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """core.dashboard.runs_overview as the home page lists it: readable names, percentages as sortable numbers."""
    return pd.DataFrame({
        "name": runs["name"],
        "status": runs["status"],
        "preset": runs["preset"].replace("", "custom"),
        "tags": runs["tags"],
        "data": ["synthetic demo" if s is True else "user data" for s in runs["synthetic"].astype(object).where(runs["synthetic"].notna(), None)],
        "images": runs["n_images"],
        "folds": runs["folds"],
        "AUC % (pooled)": percent_column(runs["auc"], 2),
        "accuracy %": percent_column(runs["accuracy"]),
        "sensitivity %": percent_column(runs["sensitivity"]),
        "specificity %": percent_column(runs["specificity"]),
        "training s": pd.Series(runs["train_seconds"], dtype="float64").round(1),
        "weights": runs["weights_used"],
        "device": runs["device"],
        "started": runs["created_at"],
        "run": runs["run_id"],
    })


def filter_runs(table: pd.DataFrame, *, text: str = "", statuses=(), presets=(), data=()) -> pd.DataFrame:
    """`runs_table` rows whose name or tags contain `text` (any case) and whose status, preset and data set are among
    those chosen (an empty choice keeps all)."""
    keep = pd.Series(True, index=table.index)
    if text.strip():
        needle = text.strip().lower()
        keep &= table["name"].str.lower().str.contains(needle, regex=False) | table["tags"].str.lower().str.contains(needle, regex=False)
    for column, chosen in (("status", statuses), ("preset", presets), ("data", data)):
        if chosen:
            keep &= table[column].isin(list(chosen))
    return table[keep]


def fold_table(folds: pd.DataFrame) -> pd.DataFrame:
    """The folds as the Runs page shows them: numbered from 1 as in the plots, each fold's AUC with its 95 % DeLong
    interval in words (a reviewer reads the table, not only the plot), percentages like the run's metrics."""
    return pd.DataFrame({
        "fold": folds["fold"] + 1,
        "train images": folds["n_train"],
        "test images": folds["n_test"],
        "iterations": folds["iterations"],
        "AUC %": percent_column(folds["auc"], 2),
        "AUC 95 % CI (DeLong)": [interval(lo, hi, 2) for lo, hi in zip(folds["auc_ci_low"], folds["auc_ci_high"])],
        "accuracy %": percent_column(folds["accuracy"]),
        "sensitivity %": percent_column(folds["sensitivity"]),
        "specificity %": percent_column(folds["specificity"]),
        "training s": folds["train_seconds"].round(1),
        # where it trained: this machine for a local run, a cluster node for a Ray run (older runs: not recorded)
        "node": folds["node"].fillna("") if "node" in folds else "",
    })


RATES = {"sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV (positive predictive value)",
         "npv": "NPV (negative predictive value)", "accuracy": "accuracy"}


def rates_table(rates: dict) -> pd.DataFrame:
    """core.results.stats.at_threshold's rates, one row each, with Wilson intervals."""
    return pd.DataFrame([{"measure": label, "value": pct(rates[key]), "95 % CI (Wilson)": interval(rates[f"{key}_ci_low"], rates[f"{key}_ci_high"])}
                         for key, label in RATES.items()])


def subgroup_table(rows: list[dict]) -> pd.DataFrame:
    """core.results.subgroups rows as the Runs page shows them: counts, AUC and rates with intervals, p against the rest,
    and a note where a group is too small for its interval to mean much (flagged, not hidden)."""
    return pd.DataFrame([{
        "variable": r["variable"], "level": r["level"], "images": r["n"], "positives": r["n_positive"],
        "AUC %": auc(r["auc"]), "AUC 95 % CI": interval(r["auc_ci_low"], r["auc_ci_high"], 2),
        "sensitivity %": pct(r["sensitivity"]), "sensitivity 95 % CI": interval(r["sensitivity_ci_low"], r["sensitivity_ci_high"]),
        "specificity %": pct(r["specificity"]), "specificity 95 % CI": interval(r["specificity_ci_low"], r["specificity_ci_high"]),
        "p (AUC vs rest)": p_value(r["p_vs_rest"]),
        "note": ("no AUC: one class only" if r["auc"] is None else "") or ("few cases: wide, unreliable intervals" if r["small"] else ""),
    } for r in rows])


def repeats_table(rows: list[dict]) -> pd.DataFrame:
    """core.results.repeats rows as the Runs page shows them: each repeat's pooled AUC and rates at 0.5, with intervals."""
    return pd.DataFrame([{
        "repeat": r["repeat"] + 1,  # every repeat predicts every image once: no images column
        "AUC % (95 % CI)": with_interval(r["auc"], r["auc_ci_low"], r["auc_ci_high"], 2),
        # each rate with its interval in one column: the table fits beside the plot
        "sensitivity % (95 % CI)": with_interval(r["sensitivity"], r["sensitivity_ci_low"], r["sensitivity_ci_high"]),
        "specificity % (95 % CI)": with_interval(r["specificity"], r["specificity_ci_low"], r["specificity_ci_high"]),
    } for r in rows])


def repeats_compare_table(rows: list[dict]) -> pd.DataFrame:
    """Compare's view of repeated runs: each run's spread of the pooled AUC over its repeats, and the corrected
    resampled t-test against the first run (where both share their splits)."""
    def test(r: dict) -> str:
        t = r.get("corrected_test_vs_first")
        if not t:
            return "reference" if r is rows[0] else "not on the same splits"
        return f"p {p_value(t['p'])} (t {t['t']:.2f}, {t['df']} df; mean difference {100 * t['mean_auc_difference']:+.2f} points over {t['folds']} folds)"

    out = []
    for r in rows:
        s = r.get("repeats_summary")
        out.append({"run": r["name"], "repeats": s["repeats"] if s else 1,
                    "pooled AUC % over repeats, mean ± SD": f"{auc(s['auc_mean'])} ± {pct(s['auc_sd'], 2)}" if s else MISSING,
                    "range": f"{auc(s['auc_min'])}-{auc(s['auc_max'])}" if s else MISSING,
                    "corrected t-test vs first": test(r)})
    return pd.DataFrame(out)


def _rate(m: dict, key: str, digits: int = 1) -> str:
    return with_interval(m.get(key), m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high"), digits, unit=False)


def reader_table(rows: list[dict]) -> pd.DataFrame:
    """core.results.readers per-reader rows: the reader's figures, the model's on the same images, and the tests.
    Short headers (the page's caption says what the intervals and tests are), so the table fits 1440 px."""
    return pd.DataFrame([{
        "reader": r["reader"], "session": r["session"], "images": r["n_read"],
        "sensitivity %": _rate(r["reader_metrics"], "sensitivity"), "specificity %": _rate(r["reader_metrics"], "specificity"),
        "AUC %": _rate(r["reader_metrics"], "auc", 2), "model AUC %": _rate(r["model_metrics"], "auc", 2),
        "p AUC vs model": p_value(r["vs_model"].get("delong_p")), "p calls vs model": p_value(r["vs_model"].get("mcnemar_p")),
        "median s": MISSING if _missing(r["median_seconds"]) else f"{r['median_seconds']:.1f}",
    } for r in rows])


def aided_table(rows: list[dict]) -> pd.DataFrame:
    """Aided against unaided per reader, on the images read in both sessions."""
    return pd.DataFrame([{
        "reader": r["reader"], "images read in both": r["n"], "AUC % aided": auc(r["auc_a"]), "AUC % unaided": auc(r["auc_b"]),
        "p (DeLong, paired)": p_value(r.get("delong_p")), "p calls (McNemar)": p_value(r.get("mcnemar_p")),
    } for r in rows])


def external_table(row: dict) -> pd.DataFrame:
    """The run's out-of-fold figures, then each external validation's, side by side (report row keys)."""
    def views(v: dict) -> str:
        return ", ".join(f"{k} {100 * x:.0f} %" for k, x in v.items()) or MISSING

    def line(label: str, r: dict, p, view: dict) -> dict:
        return {"evaluated on": label, "images": r["n_images"], "prevalence %": pct(r["prevalence"]),
                # the AUC and its interval in one column: the table fits a 1440 px screen with the views at its end
                "AUC % (95 % CI)": with_interval(r["auc"], r["auc_ci_low"], r["auc_ci_high"], 2),
                "sensitivity %": pct(r["sensitivity"]), "specificity %": pct(r["specificity"]),
                "calibration slope": MISSING if _missing(r.get("calibration_slope")) else f"{r['calibration_slope']:.2f}",
                "p (AUC vs internal)": p_value(p), "views": views(view)}

    internal = {**row, "prevalence": next((e["internal_prevalence"] for e in row["external"]), None)}
    first = row["external"][0] if row["external"] else {}
    return pd.DataFrame([line("internal (out of fold)", internal, None, first.get("internal_views", {}))]
                        + [line(e["name"] + (" (synthetic)" if e["synthetic"] else ""), e, e["p_vs_internal"], e["views"])
                           for e in row["external"]])


TABLE3_KEY = ("AUC % (95% CI, DeLong)", "sensitivity % (95% CI)", "specificity % (95% CI)", "DeLong p vs first", "Holm p",
              "corrected t-test p vs first")  # the last one only for runs on shared repeated splits (Compare shows the spread apart)


def table3_key_columns(columns, varies) -> list[str]:
    """Table 3's columns that fit a 1440 px screen: the settings that differ, AUC, sensitivity, specificity and the p-values."""
    return [c for c in [*varies, *TABLE3_KEY] if c in list(columns)]


def sweep_table(runs: pd.DataFrame) -> pd.DataFrame:
    """A sweep's runs while it trains: name, status, pooled AUC and training time."""
    return pd.DataFrame({"name": runs["name"], "status": runs["status"], "AUC % (pooled)": percent_column(runs["auc"], 2),
                         "training s": pd.Series(runs["train_seconds"], dtype="float64").round(1)})
