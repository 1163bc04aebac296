"""What the dashboard lets a browser do: read data only under configured roots, and nothing but look in demo mode.

Whoever opens the dashboard's port can type a path; without a limit they could make the
server read (and show thumbnails of) any image file it can open. So paths typed in the
browser (Data page, the Train page's data and weights fields) must lie under a data root:
`CXR_DATA_ROOTS` (folders separated by os.pathsep, ':' on Linux), by default `./data` (the
folder the dashboard was started from) and `CXR_DEMO_DIR`. The check resolves symlinks and
`..` first, so neither leads out. The command line is not limited: its user owns the shell.
A CSV manifest inside a root may list images elsewhere (cohort manifests point into the
release folders); the manifest itself was put there by someone with the shell.

Demo mode (`CXR_DEMO_MODE=1`, or `streamlit run app.py -- --demo`) is for showing results to
clinicians: no training, resuming, deleting or renaming, no typed paths (the Data page shows
the demo data set), no demo-data creation; reading runs, Grad-CAM, Predict (image uploads
are decoded in memory and never stored) and Export stay.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from core import CxrError

DATA_ROOTS_ENV = "CXR_DATA_ROOTS"
DEMO_MODE_ENV = "CXR_DEMO_MODE"
DEMO_NOTICE = "Read-only demo mode: browsing runs, Grad-CAM, Predict and Export only (training, deleting and data paths are off)."


def data_roots() -> list[Path]:
    """The folders typed paths must lie in: $CXR_DATA_ROOTS, else ./data and the demo folder."""
    configured = os.environ.get(DATA_ROOTS_ENV, "")
    if configured.strip():
        return [Path(p).expanduser() for p in configured.split(os.pathsep) if p.strip()]
    return [Path("data"), Path(os.environ.get("CXR_DEMO_DIR", "data/demo"))]


def check_data_path(path: str | Path, roots: list[Path] | None = None) -> Path:
    """`path` resolved (symlinks and `..` followed), when it lies under one of `roots`; else a CxrError naming them."""
    roots = data_roots() if roots is None else roots
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        base = Path(root).expanduser().resolve()
        if resolved == base or base in resolved.parents:
            return resolved
    allowed = ", ".join(str(Path(r).expanduser().resolve()) for r in roots) or "none configured"
    raise CxrError(f"{path} is outside the data folders this dashboard may read ({allowed}); put the data there, or restart the "
                   f"dashboard with {DATA_ROOTS_ENV} listing its folder (separated by '{os.pathsep}')")


def demo_mode() -> bool:
    """Read-only demo mode: $CXR_DEMO_MODE=1 (or true/yes/on), or `--demo` after `streamlit run app.py --`."""
    return os.environ.get(DEMO_MODE_ENV, "").strip().lower() in ("1", "true", "yes", "on") or "--demo" in sys.argv[1:]


def refuse_in_demo_mode(action: str) -> None:
    """Defence in depth behind the hidden buttons: a forged request still cannot start or delete anything."""
    if demo_mode():
        raise CxrError(f"{action} is off in read-only demo mode")
