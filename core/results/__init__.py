"""What a run leaves behind and how it is read back: the DuckDB store (every SQL statement), typed records,
the statistics (DeLong, Wilson, bootstrap bands), the study's Table 3, figures and HTML exports.

No torch: the dashboard's result pages load only this (and pandas, DuckDB, plotly).
"""
