"""Everything that runs a network: building the backbones, the training step, k-fold cross-validation, sweeps,
Grad-CAM and prediction with a finished run's fold models.

Reads data through core.data and writes every result through core.results.store; knows nothing of the pages.
Importing it loads torch (seconds), so the CLI and the pages import it only when a model must run.
"""
