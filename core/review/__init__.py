"""Clinicians in the loop: a review queue of a run's failures tagged by reviewers, and reader studies against the model.

No torch here: the pages call these directly. Statistics of reader studies are in core/results/readers.py.
"""
