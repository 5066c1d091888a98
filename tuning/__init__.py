"""shoal.tuning: Optuna-driven hyperparameter searches whose trials are shoal runs.

The search driver lands with the tuning issue; this package exists so the distribution's layout
(core -> shoal, backends -> shoal.backends, tuning -> shoal.tuning) is complete from the start.
"""
