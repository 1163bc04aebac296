"""Subgroup variables of a data set: which columns describe the patients and films, and in what form they are kept.

Only bands and categories are kept or shown: an age becomes a band (a birth date or exact age of a single
patient is an identifier in a small cohort), sex is normalised to female / male, a view to its code. What
the releases hold (core/data/cohorts.py writes them into cohort manifests): CheXpert `Sex`, `Age`; NIH
`Patient Gender`, `Patient Age`; MIMIC-CXR through MIMIC-IV's `patients.csv` (`gender`, `anchor_age`).
A CSV manifest's columns `sex`, `age` and `age_band` are read as such; `subgroup_columns` adds any others.
"""

from __future__ import annotations

import math

from core import CxrError

# Columns of a CSV manifest that are subgroup variables without being asked for (cohort manifests write them).
KNOWN_COLUMNS = ("sex", "age", "age_band")
AGE_BANDS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, math.inf, "80+"))
UNKNOWN = "unknown"


def age_band(value: str | float | int | None) -> str:
    """'67' (or NIH's '067Y') -> '60-79'; a band already ('60-79', '80+') stays; blank, unreadable or impossible ages -> 'unknown'."""
    text = str(value).strip() if value is not None else ""
    if text in {b for _, _, b in AGE_BANDS}:
        return text
    try:
        age = float(text.upper().removesuffix("Y"))  # NIH's older files write ages as '058Y'
    except ValueError:
        return UNKNOWN
    if not math.isfinite(age) or age < 0 or age > 130:
        return UNKNOWN
    return next(band for lo, hi, band in AGE_BANDS if lo <= age < hi)


def sex(value: str | None) -> str:
    """'F', 'Female', 'f' -> 'female'; 'M', 'Male' -> 'male'; anything else as written in lower case, blank -> 'unknown'."""
    text = str(value or "").strip().lower()
    return {"f": "female", "female": "female", "w": "female", "m": "male", "male": "male"}.get(text, text or UNKNOWN)


def level(variable: str, value) -> str:
    """The stored level of one image for one variable: bands for ages, normalised sex, other values as written."""
    if variable in ("age", "age_band"):
        return age_band(value)
    if variable == "sex":
        return sex(value)
    text = str(value if value is not None else "").strip()
    return text or UNKNOWN


def variable_name(column: str) -> str:
    """What a column is called as a subgroup variable: ages are always shown as bands."""
    return "age band" if column in ("age", "age_band") else column.replace("_", " ")


def parse_columns(text: str, available: list[str]) -> list[str]:
    """`subgroup_columns` ('site, scanner') checked against the manifest's columns, with the known ones that are there."""
    asked = [c.strip() for c in str(text).split(",") if c.strip()]
    missing = [c for c in asked if c not in available]
    if missing:
        raise CxrError(f"subgroup column(s) {', '.join(map(repr, missing))} not in the manifest (columns: {', '.join(available)}); "
                       "fix subgroup_columns")
    known = [c for c in KNOWN_COLUMNS if c in available]
    if "age" in known and "age_band" in known:
        known.remove("age")  # one age variable: the band the manifest already gives
    return list(dict.fromkeys([*known, *asked]))
