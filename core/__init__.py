"""cxr-transfer engine: data, k-fold transfer learning, metrics and the DuckDB store (no UI)."""

import os

__version__ = "0.1.0"

# OpenMP threads that spin while waiting collapse when another process shares the cores: measured on
# this 2-core machine under load, 10 ResNet-18 iterations took 15.5 s with 2 spinning threads, 2.9 s
# with passive waiting and 2.2 s with 1 thread. Must be set before torch loads its OpenMP runtime;
# OMP_WAIT_POLICY=ACTIVE in the environment restores spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class CxrError(Exception):
    """A problem the user can fix (bad input, missing weights, locked store).

    The CLI prints its message as one line and exits non-zero; the dashboard shows
    it as an error box. Messages say what was wrong *and* what to do about it.
    """
