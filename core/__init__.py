"""cxr-transfer engine: data, k-fold transfer learning, metrics and the DuckDB store (no UI)."""

import os

__version__ = "0.1.0"

# torch's OpenMP threads (libgomp) spin about 300,000 times before sleeping; when another process
# shares the cores that spinning collapses training. Measured on this 2-core machine (ResNet-18,
# 64 px, images/s): beside another torch process, default 4.9, GOMP_SPINCOUNT=1000 17.4, passive
# waiting 15.1; on a quiet machine 60.5, 53.4 and 47.8 (docs/benchmarks.md). A short spin keeps most
# of the quiet speed and none of the collapse. Read when torch loads, so set here, before any import
# of torch; an OMP_WAIT_POLICY or GOMP_SPINCOUNT of your own wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")


class CxrError(Exception):
    """A problem the user can fix (bad input, missing weights, locked store).

    The CLI prints its message as one line and exits non-zero; the dashboard shows
    it as an error box. Messages say what was wrong *and* what to do about it.
    """
