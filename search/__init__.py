"""Hyperparameter search (Optuna on one machine, Ray Tune on a cluster). Filled in by the sweep issue."""
