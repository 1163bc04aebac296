"""Clinicians in the loop: a review queue of a run's failures tagged by reviewers, and reader studies against the model.

No torch here: the pages call these directly. This package writes (tags, studies, reads); reading them back for
reports is core/results/clinicians.py, and the statistics of reader studies core/results/readers.py. Imports go
from here to core/results and core/data, never back.
"""
