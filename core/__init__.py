"""cxr-transfer engine: data, k-fold transfer learning, metrics and the DuckDB store (no UI)."""

__version__ = "0.1.0"


class CxrError(Exception):
    """A problem the user can fix (bad input, missing weights, locked store).

    The CLI prints its message as one line and exits non-zero; the dashboard shows
    it as an error box. Messages say what was wrong *and* what to do about it.
    """
