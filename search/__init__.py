"""Hyperparameter search: YAML spaces (``space``), one trial through the training loop (``trial``),
and two backends, Optuna on one machine or several (``optuna_backend``) and Ray Tune on a cluster
(``ray_backend``), each tracked in MLflow as a parent run with a child run per trial."""
